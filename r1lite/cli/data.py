"""`r1lite data countdown`: generate or import the Countdown problems."""

from __future__ import annotations

from typing import Annotated

import typer

from r1lite.cli.common import ProfileOpt, SetOpt

app = typer.Typer(help="Prepare task data (train/test JSONL plus a manifest).", no_args_is_help=True)


@app.command("countdown")
def countdown(
    source: Annotated[str | None, typer.Option("--from", help="local .parquet/.jsonl/.csv, or hf:DATASET")] = None,
    out: Annotated[str | None, typer.Option("--out", help="output folder (default: data.dir of the recipe)")] = None,
    train_size: Annotated[int | None, typer.Option(min=1, help="training problems")] = None,
    test_size: Annotated[int | None, typer.Option(min=1, help="held-out problems")] = None,
    seed: Annotated[int | None, typer.Option(help="generator / shuffle seed")] = None,
    force: Annotated[bool, typer.Option("--force", help="rewrite even when the data is up to date")] = False,
    recipe: Annotated[str, typer.Option(help="recipe whose data section is the default")] = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write data/countdown/{train,test}.jsonl and manifest.json (every problem solver-checked)."""
    from r1lite.cli.common import resolve_recipe
    from r1lite.stages import data

    flags = {"source": source, "dir": out, "train_size": train_size, "test_size": test_size, "seed": seed}
    overrides = [*(set_ or []), *(f"data.{k}={v}" for k, v in flags.items() if v is not None)]
    cfg = resolve_recipe(recipe, profile, overrides, detect=False).data
    data.run(cfg, force=force)
