"""What machine are we on: CUDA or not, GPU name and memory, and which recipe profile fits it."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    gpu_name: str | None
    gpu_total_gib: float
    gpu_free_gib: float
    bf16: bool = True  # bf16 tensor cores (compute capability 8.0+); T4 and V100 lack them
    capability: tuple[int, int] | None = None


def probe() -> Hardware:
    """This process's GPU (the current device, which `distributed.pin_device` sets per rank), or none."""
    import torch

    if not torch.cuda.is_available():
        return Hardware(False, None, 0.0, 0.0)
    index = torch.cuda.current_device()
    free, total = torch.cuda.mem_get_info(index)
    capability = torch.cuda.get_device_capability(index)
    return Hardware(
        True,
        torch.cuda.get_device_name(index),
        total / 2**30,
        free / 2**30,
        bf16=capability >= (8, 0),
        capability=capability,
    )


def pick_profile(available: list[str], hw: Hardware) -> str | None:
    """`cpu` without CUDA; otherwise the largest `gpu-<N>gb` profile with N within the card's memory."""
    if not hw.cuda:
        return "cpu" if "cpu" in available else None
    sized = []
    for name in available:
        m = re.fullmatch(r"gpu-(\d+)gb", name)
        # marketing GB vs GiB and driver reservations: a "16 GB" card reports ~15.6 GiB
        if m and int(m.group(1)) <= hw.gpu_total_gib * 1.1:
            sized.append((int(m.group(1)), name))
    if sized:
        return max(sized)[1]
    gpu = [n for n in available if n.startswith("gpu")]
    return gpu[0] if gpu else None


def detect_profile(available: list[str]) -> str | None:
    return pick_profile(available, probe())
