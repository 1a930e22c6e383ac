"""The machine and library versions a run used, recorded in `hardware.json` and shown by `doctor`."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

from r1lite.plan import hardware

PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "wandb", "r1lite")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe() -> dict[str, Any]:
    hw = hardware.probe()
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda": hw.cuda,
        "gpu_name": hw.gpu_name,
        "gpu_total_gib": round(hw.gpu_total_gib, 1),
        "gpu_free_gib": round(hw.gpu_free_gib, 1),
        "versions": versions(),
    }
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        info["torch_cuda"] = None
    return info
