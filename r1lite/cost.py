"""What a run cost: measured wall-clock per stage, GPU-hours, and dollars at a rental price.

    >>> price_for("NVIDIA GeForce RTX 4090")        # (0.35, 'RTX 4090')
    >>> run_cost({"sft": 600.0, "grpo": 7200.0}, gpus=1, hourly_usd=0.35)

Prices are editable defaults: typical on-demand community-cloud rates per GPU-hour, checked on
PRICES_DATE. Rates move; set `cost.gpu_hourly_usd` in the recipe to use your own.
"""

from __future__ import annotations

from typing import Any

PRICES_DATE = "2026-11"
# USD per GPU-hour, on-demand, single GPU (editable defaults; override with cost.gpu_hourly_usd). Each row:
# where and when the rate was seen. RunPod = Community Cloud on-demand; Vast.ai = marketplace median.
GPU_PRICES: dict[str, float] = {
    "RTX 3060": 0.093,  # 12 GB; Vast.ai median, 2025-10 (kani-tts README, commit of 2025-10-28)
    "RTX 4060 Ti": 0.122,  # 16 GB; Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    "RTX 5060 Ti": 0.138,  # 16 GB; Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    "A4000": 0.17,  # RTX A4000 16 GB; RunPod, 2026-08-26 (Secure Cloud 0.25, 2026-10-03)
    "RTX 4080": 0.22,  # 16 GB; Vast.ai median, 2025-10 (kani-tts README, 2025-10-28)
    "T4": 0.35,  # 16 GB, no bf16; Google Cloud on-demand, 2025-02-06 (marketplaces list it cheaper, undated)
    "RTX 3090": 0.22,  # RunPod, 2026-08-26
    "RTX 4090": 0.35,  # RunPod 0.34, 2026-08-26 (Vast.ai 0.16-0.54, 2026-02)
    "RTX 5090": 0.69,  # RunPod, 2026-09-07
    "L4": 0.45,  # RunPod 0.44, 2026-08-26
    "A10": 0.60,  # typical community-cloud rate, 2026-11 (Lambda lists 1.29, 2026-09-09)
    "L40S": 0.79,  # RunPod, 2026-09-07
    "A6000": 0.33,  # RTX A6000 48 GB; RunPod, 2026-09-09
    "A100": 1.30,  # 80 GB; RunPod 1.19 PCIe / 1.39 SXM, 2026-08-26
    "H100": 2.10,  # typical community-cloud rate, 2026-11 (RunPod 1.99 PCIe / 2.69 SXM, 2026-08-26)
    "H200": 3.00,  # typical community-cloud rate, 2026-11 (RunPod ~3.59, 2026-08-26)
}
TINYZERO_CLAIM_USD = 30.0  # "under $30" of GPU rent (TinyZero README)


def price_for(gpu_name: str | None) -> tuple[float | None, str | None]:
    """Match a device name such as 'NVIDIA H200' against the table (longest key first)."""
    if not gpu_name:
        return None, None
    name = gpu_name.upper().replace("GEFORCE ", "")
    for key in sorted(GPU_PRICES, key=len, reverse=True):
        if key.upper() in name:
            return GPU_PRICES[key], key
    return None, None


def run_cost(stage_seconds: dict[str, float], gpus: int, hourly_usd: float | None) -> dict[str, Any]:
    """Per stage and in total: seconds, GPU-hours (seconds x GPUs / 3600) and dollars."""
    rows = {}
    for stage, seconds in stage_seconds.items():
        gpu_hours = seconds * gpus / 3600
        rows[stage] = {
            "seconds": round(seconds, 1),
            "gpu_hours": round(gpu_hours, 4),
            "usd": None if hourly_usd is None else round(gpu_hours * hourly_usd, 4),
        }
    total_s = sum(stage_seconds.values())
    total_h = total_s * gpus / 3600
    return {
        "stages": rows,
        "total": {
            "seconds": round(total_s, 1),
            "gpu_hours": round(total_h, 4),
            "usd": None if hourly_usd is None else round(total_h * hourly_usd, 4),
        },
        "gpus": gpus,
        "hourly_usd": hourly_usd,
        "tinyzero_claim_usd": TINYZERO_CLAIM_USD,
    }


def cost_for_run(recipe: Any, stage_seconds: dict[str, float], hardware: dict[str, Any]) -> dict[str, Any]:
    """The recipe's price (or the table's for the detected GPU) applied to the measured stage times."""
    gpus = 1 if hardware.get("cuda") else 0
    table_price, matched = price_for(recipe.cost.gpu or hardware.get("gpu_name"))
    hourly = recipe.cost.gpu_hourly_usd if recipe.cost.gpu_hourly_usd is not None else table_price
    if gpus == 0:
        hourly = 0.0
    result = run_cost(stage_seconds, gpus, hourly)
    result["gpu"] = recipe.cost.gpu or hardware.get("gpu_name") or "none (CPU)"
    result["price_source"] = (
        "recipe cost.gpu_hourly_usd"
        if recipe.cost.gpu_hourly_usd is not None
        else f"built-in table ({matched}, {PRICES_DATE})"
        if matched
        else "no GPU"
        if gpus == 0
        else "unknown GPU: set cost.gpu_hourly_usd"
    )
    return result


def cost_line(cost: dict[str, Any]) -> str:
    total = cost["total"]
    usd = "n/a" if total["usd"] is None else f"${total['usd']:.2f}"
    return (
        f"cost: {total['seconds'] / 60:.1f} min wall, {total['gpu_hours']:.2f} GPU-h on {cost['gpu']} = {usd} "
        f"({cost['price_source']}); TinyZero: < ${cost['tinyzero_claim_usd']:.0f}"
    )
