"""Precision on this machine: which dtype a recipe computes in here, decided before any model loads.

>>> cpu_bf16(recipe.model, on_cuda=False)     # bf16 autocast on CPUs with native bf16 (AVX512-BF16, AMX)
>>> fit_precision(recipe, probe())             # fp16 with loss scaling on GPUs without bf16 (T4, V100)
>>> torch_dtype(recipe.model, "cuda")          # the weights' dtype: bf16 on CUDA, fp32 on CPU under auto
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.errors import RecipeError


def torch_dtype(cfg: Any, device: str) -> Any:
    import torch

    if cfg.dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, cfg.dtype)


def uses_cuda(cfg: Any) -> bool:
    """Whether the model runs on CUDA, without raising when the recipe asks for a GPU this machine lacks."""
    import torch

    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow.

    R1LITE_CPU_BF16=0 (or 1) answers for the machine: the test suite sets 0 so its runs compute alike on
    every CPU, whether it has bf16 or not.
    """
    if os.environ.get("R1LITE_CPU_BF16") in ("0", "1"):
        return os.environ["R1LITE_CPU_BF16"] == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_bf16(cfg: Any, on_cuda: bool) -> bool:
    """Whether this run computes in bf16 on the CPU (`model.cpu_bf16`, auto resolved for this machine)."""
    if on_cuda or cfg.cpu_bf16 is False:
        return False
    return cfg.cpu_bf16 is True or native_cpu_bf16()


def fit_precision(recipe: Any, hw: Any) -> Any:
    """The recipe in fp16 on a GPU without bf16 (T4, V100), decided before any model loads.

    bf16 needs compute capability 8.0 (Ampere); older cards fail inside TrainingArguments, after the
    base eval has run. `model.dtype: auto` and the bf16 4-bit compute dtype become fp16 there (TRL
    trains with loss scaling; adapters keep fp32 masters); an explicit `model.dtype: bfloat16` stops.
    """
    if not hw.cuda or hw.bf16 or recipe.model.device == "cpu":
        return recipe
    card = f"{hw.gpu_name or 'this GPU'} (compute capability {'.'.join(map(str, hw.capability or ()))})"
    if recipe.model.dtype == "bfloat16":
        raise RecipeError(f"model.dtype=bfloat16 but {card} has no bf16; set model.dtype=auto (fp16 here) or float16")
    model = recipe.model.model_copy(update={"dtype": "float16" if recipe.model.dtype == "auto" else recipe.model.dtype})
    q = recipe.quantization
    compute = "float16" if q.compute_dtype == "bfloat16" else q.compute_dtype
    fitted = recipe.model_copy(update={"model": model, "quantization": q.model_copy(update={"compute_dtype": compute})})
    if fitted != recipe:
        ui.log(
            f"{card} has no bf16: training in fp16 with loss scaling (model.dtype={model.dtype}, "
            f"quantization.compute_dtype={compute})"
        )
    return fitted
