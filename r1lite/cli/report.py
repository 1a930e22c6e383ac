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
    from r1lite.analyze.report import build_report

    path = build_report(run)
    console.print(f"wrote {path} and {path.with_suffix('.md')}")


@runs_app.command("list")
def list_(root: Annotated[Path, typer.Option(help="folder holding run directories")] = Path("runs")) -> None:
    """One line per run: stages done, base and final accuracy, wall time."""
    from rich.table import Column

    from r1lite.runs.rundir import list_runs

    table = Table(
        Column("run", no_wrap=True), "stages", "base acc", "final acc", "final format", "wall", title=f"runs in {root}"
    )
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for r in (run.progress() for run in list_runs(root)):
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
    a: Annotated[str, typer.Argument(help="a run directory, or a quoted glob of several (one config's seeds)")],
    b: Annotated[str, typer.Argument(help="the other run directory or quoted glob")],
    out: Annotated[Path | None, typer.Option(help="PNG of the overlaid curves")] = None,
) -> None:
    """Final metrics side by side, what training fixed and broke, and how sure the difference is; curves overlaid.

    Each side may be several runs (a glob such as 'runs/sw/learning_rate-1e-05-s*'): then each side's accuracy
    is a mean over its seeds with a 95 % interval, and the difference is paired on the held-out problems.
    """
    from r1lite.analyze.report import GROUPS, before_after, plot_curves
    from r1lite.runs.rundir import Run
    from r1lite.runs.summary import METRICS
    from r1lite.stats import nested_interval, paired_runs_difference

    sides = [[Run.open(r) for r in _runs(pattern)] for pattern in (a, b)]
    names = [s[0].name if len(s) == 1 else f"{s[0].name} +{len(s) - 1}" for s in sides]
    finals = [[r.eval("final") for r in s] for s in sides]
    several = any(len(s) > 1 for s in sides)
    table = Table("metric", *names, title="final eval" + (" (mean over runs)" if several else ""))
    for key in (*METRICS, "examples"):
        values = [[f[key] for f in side if key in f] for side in finals]
        cells = ["-" if not v else _cell(sum(v) / len(v)) for v in values]
        table.add_row(key, *cells)
    if all(len(s) == 1 for s in sides):  # the same counts as each run's report (the examples are in report.md)
        paired = [before_after(s[0]) for s in sides]
        for group in GROUPS:
            table.add_row(f"{group} vs base", *["-" if p is None else str(p.counts[group]) for p in paired])
    console.print(table)
    correct = [[[float(r["correct"]) for r in d.eval_rows("final")] for d in s] for s in sides]
    n = min((len(c) for side in correct for c in side), default=0)
    if n:
        for name, side in zip(names, correct, strict=True):
            ci = nested_interval([c[:n] for c in side])
            line = f"{name}: accuracy {ci.estimate:.1%} [95 % interval {ci.low:.1%}, {ci.high:.1%}]"
            console.print(line, soft_wrap=True)
        diff = paired_runs_difference([c[:n] for c in correct[1]], [c[:n] for c in correct[0]])
        verdict = "above zero" if diff.low > 0 else "below zero" if diff.high < 0 else "not distinguishable from zero"
        console.print(f"{names[1]} - {names[0]}: {diff.points()} (paired over {n} problems: {verdict})", soft_wrap=True)
    target = out or sides[0][0].root.parent / f"compare-{sides[0][0].name}-vs-{sides[1][0].name}.png"
    if plot_curves([d.root for s in sides for d in s], target):
        console.print(f"curves: {target}")
    else:
        console.print("no GRPO curves in either run")


def _runs(pattern: str) -> list[Path]:
    """A run directory, or every run directory a glob names (sorted); a clear error when none."""
    from glob import glob

    from r1lite.errors import R1liteError

    found = sorted(Path(p) for p in glob(pattern)) if any(c in pattern for c in "*?[") else [Path(pattern)]
    if not found:
        raise R1liteError(f"no run directory matches {pattern}; `r1lite runs list` shows the runs")
    return found


def _cell(value: float | int) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
