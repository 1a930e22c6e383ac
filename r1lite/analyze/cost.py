"""What a run cost: measured wall-clock per stage, GPU-hours, and dollars at a rental price.

    >>> price_for("NVIDIA GeForce RTX 4090")        # (0.35, 'RTX 4090')
    >>> run_cost({"sft": 600.0, "grpo": 7200.0}, gpus=1, hourly_usd=0.35)

Prices are editable defaults in the one card table (`r1lite.plan.hardware.CARDS`, each with its source and date):
typical on-demand community-cloud rates per GPU-hour, checked on PRICES_DATE. Rates move; set
`cost.gpu_hourly_usd` in the recipe to use your own.
"""

from __future__ import annotations

from typing import Any

from r1lite.plan.hardware import PRICES_DATE, find_card

TINYZERO_CLAIM_USD = 30.0  # "under $30" of GPU rent (TinyZero README)


def price_for(gpu_name: str | None) -> tuple[float | None, str | None]:
    """The hourly price and model of the card a device name such as 'NVIDIA H200' names (`hardware.find_card`);
    (None, None) for a card the table does not know or has no price for."""
    card = find_card(gpu_name)
    if card is None or card.usd_per_hour is None:
        return None, None
    return card.usd_per_hour, card.model


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
