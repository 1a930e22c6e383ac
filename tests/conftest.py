"""Shared fixtures: every cache and output folder points into the test's tmp_path; nothing online."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `model.cpu_bf16: auto` resolves to fp32 in tests (and in the processes they start), so a run computes the same
# on a CPU with native bf16 and on one without; tests that want bf16 ask for it (model.cpu_bf16=true)
os.environ["R1LITE_CPU_BF16"] = "0"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield


def pytest_collection_modifyitems(config, items):
    """`cuda` tests run where CUDA is (`pytest -m cuda`, bench/gpu_check.py) and are skipped elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
