"""`r1lite sweep`: a grid of settings x seeds as ordinary runs, and `r1lite sweep report S` for its statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r1lite.cli.common import ProfileOpt, SetOpt
from r1lite.errors import R1liteError


def sweep(
    target: Annotated[
        str, typer.Argument(help="a recipe (countdown), a sweep file (recipes/sweeps/loss-type.yaml), or `report`")
    ],
    sweep_name: Annotated[str | None, typer.Argument(help="with `report`: the sweep's name or folder")] = None,
    profile: ProfileOpt = None,
    vary: Annotated[list[str] | None, typer.Option("--vary", help="key=v1,v2 (repeatable): the grid")] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds", min=1, help="runs per config: the recipe's seed and the next (default 1, or the file's)"
        ),
    ] = None,
    control: Annotated[
        bool,
        typer.Option("--control", help="every config also as a control arm (grpo.reward_control=shuffle)"),
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="the sweep's folder under output_dir")] = None,
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the grid with the plan's time and cost")] = False,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="runs at once (one GPU each, or CPU shares)")] = 1,
    launcher: Annotated[str, typer.Option("--launcher", help="local (processes here) or slurm (submitit)")] = "local",
    slurm_partition: Annotated[str | None, typer.Option(help="with --launcher slurm: the partition")] = None,
    baseline: Annotated[str | None, typer.Option(help="with `report`: the config others are compared with")] = None,
) -> None:
    """Run a sweep (finished runs are skipped, interrupted ones continue), or `r1lite sweep report S`."""
    from r1lite.analyze.sweep_report import build_sweep_report, collect, headline
    from r1lite.orchestrate.sweep import Sweep, launch, plan_rows
    from r1lite.ui import console

    if target == "report":
        if not sweep_name:
            raise R1liteError("`r1lite sweep report` needs the sweep: r1lite sweep report NAME (or runs/NAME)")
        folder = Path(sweep_name) if Path(sweep_name).is_dir() else Path("runs") / sweep_name
        collected = collect(folder)
        path = build_sweep_report(folder, baseline, collected)
        for line in headline(*collected):
            console.print(line, soft_wrap=True)
        console.print(f"wrote {path} and {path.with_suffix('.md')}")
        return
    if launcher not in ("local", "slurm"):
        raise R1liteError(f"--launcher {launcher}: use local or slurm")
    if target.endswith((".yaml", ".yml")) and _is_sweep_file(Path(target)):
        if vary or set_ or control:
            raise R1liteError("a sweep file holds its grid: put --vary, --set and --control into the file")
        s = Sweep.from_file(Path(target), name, seeds)
    else:
        s = Sweep.from_args(target, profile, vary or [], seeds or 1, name, set_, control)
    rows = plan_rows(s)
    _print_grid(s, rows)
    too_big = [r["config"] for r in rows if r["fits"] is False]
    if too_big:
        raise R1liteError(f"the plan says {', '.join(too_big)} will not fit {rows[0]['card']}; `r1lite plan` shows why")
    if dry_run:
        return
    options = {"slurm_partition": slurm_partition} if slurm_partition else {}
    codes = launch(s, parallel, launcher, options)
    failed = {k: v for k, v in codes.items() if v}
    done = len(codes) - len(failed)
    console.print(f"sweep {s.name}: {done} of {len(codes)} runs finished; the report: r1lite sweep report {s.name}")
    if failed:
        raise R1liteError(f"runs that did not finish: {', '.join(failed)} (their sweep.log says why); rerun to go on")


def _is_sweep_file(path: Path) -> bool:
    from r1lite.recipe.load import read_yaml

    return path.is_file() and ("vary" in read_yaml(path) or "control" in read_yaml(path))


def _print_grid(s, rows) -> None:
    from rich.table import Table

    from r1lite.ui import console

    heads = ("config", "seeds", "peak GiB", "fits", "hours / run", "USD / run")
    table = Table(*heads, title=f"sweep {s.name} -> {s.root}")
    total_h = total_usd = 0.0
    for r in rows:
        hours, usd = r["hours"] or 0.0, r["usd"]
        total_h += hours * r["runs"]
        total_usd += (usd or 0.0) * r["runs"]
        table.add_row(
            r["config"], str(r["runs"]), f"{r['peak_gib']:.1f}", {True: "yes", False: "NO", None: "-"}[r["fits"]],
            f"{hours:.2f}", "-" if usd is None else f"${usd:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"the whole sweep: {len(s.runs())} runs, ~{total_h:.1f} h and ~${total_usd:.2f} (r1lite plan)")
