"""`r1lite data TASK`: generate or import a task's problems (countdown, rg:<name>, your_task.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r1lite.cli.common import ProfileOpt, SetOpt

TaskArg = Annotated[str, typer.Argument(help="countdown, rg:<name> (r1lite tasks list), a .py file or a module")]


def data(
    task: TaskArg,
    source: Annotated[str | None, typer.Option("--from", help="local .parquet/.jsonl/.csv, or hf:DATASET")] = None,
    out: Annotated[str | None, typer.Option("--out", help="output folder (default: data.dir of the recipe)")] = None,
    train_size: Annotated[int | None, typer.Option(min=1, help="training problems")] = None,
    test_size: Annotated[int | None, typer.Option(min=1, help="held-out problems for claims")] = None,
    validation_size: Annotated[
        int | None, typer.Option(min=0, help="held-out problems for choices (0: none; small imports)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="generator / shuffle seed")] = None,
    force: Annotated[bool, typer.Option("--force", help="rewrite even when the data is up to date")] = False,
    recipe: Annotated[
        str | None, typer.Option(help="recipe whose data section is the default (default: the one for TASK)")
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write data/<task>/{train,validation,test}.jsonl and manifest.json: seeded, de-duplicated, splits disjoint."""
    from r1lite.fileio import check_writable
    from r1lite.recipe.load import task_recipe
    from r1lite.stages import data as stage

    if out:
        check_writable(Path(out) / "manifest.json", "--out")
    flags = {"source": source, "dir": out, "train_size": train_size, "test_size": test_size, "seed": seed}
    flags["validation_size"] = validation_size
    overrides = [*(set_ or []), *(f"data.{k}={v}" for k, v in flags.items() if v is not None)]
    stage.run(task_recipe(task, recipe, profile, overrides).data, force=force)
