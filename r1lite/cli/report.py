"""`r1lite report RUN` and `r1lite runs list|compare`: read what runs wrote, never re-train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from r1lite.ui import console

runs_app = typer.Typer(help="List finished and unfinished runs, compare two of them.", no_args_is_help=True)
RunArg = Annotated[Path, typer.Argument(help="a run directory, e.g. runs/countdown-cpu")]


def report(run: RunArg) -> None:
    """Write report.md and report.html (curves, before/after, cost, recipe, versions) into the run directory."""
    from r1lite.report import build_report

    path = build_report(run)
    console.print(f"wrote {path} and {path.with_suffix('.md')}")


@runs_app.command("list")
def list_(root: Annotated[Path, typer.Option(help="folder holding run directories")] = Path("runs")) -> None:
    """One line per run: stages done, base and final accuracy, wall time."""
    from rich.table import Column

    from r1lite.report import list_runs

    table = Table(
        Column("run", no_wrap=True), "stages", "base acc", "final acc", "final format", "wall", title=f"runs in {root}"
    )
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for r in list_runs(root):
        table.add_row(
            r["name"],
            f"{r['stages_done']}/{r['stages_total']}",
            pct(r["base_accuracy"]),
            pct(r["final_accuracy"]),
            pct(r["final_format_rate"]),
            f"{r['wall_seconds'] / 60:.1f} min",
            r["path"],
        )
    console.print(table)


@runs_app.command("compare")
def compare(
    a: RunArg, b: RunArg, out: Annotated[Path | None, typer.Option(help="PNG of the overlaid curves")] = None
) -> None:
    """Final metrics side by side, with what each run's training fixed and broke, and the GRPO curves overlaid."""
    from r1lite.fileio import read_json_or_empty
    from r1lite.report import GROUPS, before_after, check_run_dir, plot_curves

    runs = [check_run_dir(a), check_run_dir(b)]
    finals = [read_json_or_empty(r / "eval/final.json") for r in runs]
    table = Table("metric", runs[0].name, runs[1].name, title="final eval")
    for key in ("accuracy", "format_rate", "mean_reward", "mean_length", "search_rate", "examples"):
        values = [f.get(key) for f in finals]
        table.add_row(key, *["-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values])
    # the same counts as each run's report (the examples themselves are in report.md)
    paired = [before_after(r) for r in runs]
    for group in GROUPS:
        table.add_row(f"{group} vs base", *["-" if p is None else str(p.counts[group]) for p in paired])
    console.print(table)
    target = out or runs[0].parent / f"compare-{runs[0].name}-vs-{runs[1].name}.png"
    if plot_curves(runs, target):
        console.print(f"curves: {target}")
    else:
        console.print("no GRPO curves in either run")
