"""A run's eval summary as people read it: its metrics, its paired changes in words, the before/after table.

    >>> summary_change_lines(run.summary())      # the declared metric first: "avg@4 (declared metric), ..."
    >>> console.print(comparison_table(base, final, "countdown", middle=warmup))

The keys an eval summary holds (`METRICS`, plus avg@k / pass@k and a task's own) are written by
r1lite.stages.evaluate; everything that shows them (the run's last lines, reports, model cards, sweeps) reads
them here, so a metric is named and formatted the same everywhere.
"""

from __future__ import annotations

from typing import Any

from r1lite.stats import Interval

METRICS = ("accuracy", "format_rate", "mean_reward", "mean_length", "search_rate")


CHANGE_NAMES = {
    "final_vs_base": "trained vs base",
    "warmup_vs_base": "warm-up (SFT) vs base",
    "final_vs_warmup": "GRPO's own effect (final vs warm-up)",
}


def change_lines(changes: dict[str, dict[str, float]], metric: str = "accuracy") -> list[str]:
    """One line per paired change of `metric` (accuracy, avg@k): the estimate, its 95 % interval, and whether it
    excludes zero."""
    lines = []
    for name, values in changes.items():
        ci = Interval(values["estimate"], values["low"], values["high"], int(values["n"]))
        verdict = "above zero" if ci.low > 0 else "below zero" if ci.high < 0 else "not distinguishable from zero"
        what = CHANGE_NAMES.get(name, name)
        lines.append(f"{metric}, {what}: {ci.points()} (95 % paired bootstrap over {ci.n} problems: {verdict})")
    return lines


def sampled_name(*evals: dict[str, Any]) -> str:
    """How an eval summary names its sampled metric (avg@k with its k), or avg@k when none sampled."""
    return next((k for e in evals for k in e if k.startswith("avg@")), "avg@k")


def summary_change_lines(summary: dict[str, Any]) -> list[str]:
    """A run's paired changes, greedy and (when its evals sampled) avg@k, the declared metric first and marked."""
    declared = summary.get("metric", "accuracy")
    sampled = sampled_name(summary.get("final", {}))
    blocks = [("accuracy", summary.get("changes", {})), (sampled, summary.get("changes_sampled", {}))]
    blocks.sort(key=lambda block: block[0] != declared)
    lines = []
    for name, changes in blocks:
        marked = f"{name} (declared metric)" if name == declared and len(blocks[1][1]) else name
        lines += change_lines(changes, marked)
    return lines


def steps_line(summary: dict[str, Any]) -> str | None:
    """How many GRPO steps the run trained of those it planned (a time guard may stop it early): arms compared
    must have trained alike."""
    steps = summary.get("grpo_steps")
    if not steps:
        return None
    cut = " (stopped early by grpo.max_minutes)" if steps["trained"] < steps["planned"] else ""
    return f"GRPO: {steps['trained']} of {steps['planned']} steps trained{cut}"


def comparison_table(
    before: dict[str, Any], after: dict[str, Any], task: str = "countdown", middle: dict[str, Any] | None = None
) -> Any:
    """A rich table of base vs trained metrics with the change; `middle` (the warm-up) as a column between."""
    from rich.table import Table

    title = f"{task.replace('_', ' ').capitalize()} held-out eval"
    labels = [before.get("label", "before"), *([middle.get("label", "warm-up")] if middle else [])]
    table = Table("metric", *labels, after.get("label", "after"), "change", title=title)
    meta = {*METRICS, "label", "model", "adapter", "examples", "processes", "seconds"}
    extra = sorted(
        k for k, v in after.items() if k not in meta and isinstance(v, int | float) and not isinstance(v, bool)
    )
    keys = [k for k in (*METRICS, *extra) if k in before and k in after]
    for key in keys:
        b, a = before[key], after[key]
        if key == "mean_reward":
            fmt, change = (lambda v: f"{v:.3f}"), f"{a - b:+.3f}"
        elif key == "mean_length":
            fmt, change = (lambda v: f"{v:.0f}"), f"{a - b:+.0f}"
        elif key not in METRICS and not key.startswith(("pass@", "avg@")):  # a task's own metric: its unit is its own
            fmt, change = (lambda v: f"{v:.3g}"), f"{a - b:+.3g}"
        else:
            fmt, change = (lambda v: f"{v:.1%}"), f"{(a - b) * 100:+.1f} pt"
        mid = [fmt(middle[key]) if key in middle else "-"] if middle else []
        table.add_row(key, fmt(b), *mid, fmt(a), change)
    return table
