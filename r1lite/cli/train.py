"""`r1lite sft|grpo|eval|run`: the training pipeline's commands. Each works on `runs/<name>-<profile>/`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from r1lite.cli.common import ProfileOpt, RecipeArg, SetOpt, resolve_recipe
from r1lite.errors import R1liteError

RestartOpt = Annotated[
    bool,
    typer.Option("--restart", help="start the training stages over instead of continuing from their last checkpoints"),
]
WandbOpt = Annotated[str | None, typer.Option("--wandb", help="online | offline | disabled (overrides the recipe)")]
GpusOpt = Annotated[
    int | None,
    typer.Option(
        "--gpus", min=1, help="run N processes through `accelerate launch` (distributed.strategy picks DDP or ZeRO)"
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="with --gpus: print the launch command and batch split")]
AutoFitOpt = Annotated[
    bool,
    typer.Option(
        "--auto-fit", help="choose micro-batch, merge mode and eval/SFT batch so the run fits this GPU (r1lite plan)"
    ),
]


def _recipe(name: str, profile: str | None, set_: list[str] | None, wandb: str | None = None, auto_fit: bool = False):
    """The recipe the flags name, prepared for this machine (`pipeline.prepare`) before any real work."""
    from r1lite.orchestrate import pipeline

    sets = [*(set_ or []), *([f"tracking.wandb={wandb}"] if wandb else [])]
    return pipeline.prepare(resolve_recipe(name, profile, sets), auto_fit)


def _launch(argv: list[str], recipe: Any, gpus: int, dry_run: bool) -> None:
    """Print (dry run) or exec the `accelerate launch` command that runs `r1lite <argv>` on `gpus` processes."""
    import os
    import shutil
    import sys

    from r1lite.machine.distributed import launch_command, show, split_batch
    from r1lite.recipe.config import check_backends
    from r1lite.ui import console, is_live

    check_backends(recipe)
    g, s = recipe.grpo, recipe.sft
    micro, accumulation = split_batch(g.prompts_per_step * g.num_generations, g.micro_batch_size, gpus)
    sft_micro, sft_accumulation = split_batch(s.batch_size * s.grad_accum, s.batch_size, gpus, "sft")
    command = launch_command((["--quiet"] if not is_live() else []) + argv, gpus, recipe.distributed.strategy)
    console.print(show(command), markup=False, soft_wrap=True)
    console.print(
        f"per process: GRPO {micro} completions x {accumulation} accumulation steps "
        f"({g.prompts_per_step * g.num_generations} per optimizer step over {gpus} processes); "
        f"SFT {sft_micro} x {sft_accumulation}",
        soft_wrap=True,
    )
    if dry_run:
        return
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    # torch elastic forwards a SIGTERM to the workers and kills them 30 s later by default: give them time to
    # finish their step and write a checkpoint (r1lite.runs.signals)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900")
    os.execv(launcher, [launcher, *command[1:]])


def _say(path: Path) -> None:
    """Print a stage's output path once, from the main process."""
    from r1lite.machine.distributed import is_main

    if is_main():
        print(path)


def _interrupted(stage: str) -> None:
    from r1lite.ui import err_console

    err_console.print(
        f"stopped at once during {stage}; finished stages and saved checkpoints are kept (nothing is half-written). "
        "Run the same command again to continue.",
        soft_wrap=True,
    )
    raise typer.Exit(130)


@contextlib.contextmanager
def _stage(recipe: Any, name: str) -> Iterator[tuple[Any, Any]]:
    """`pipeline.stage`, with a second Ctrl-C as exit code 130."""
    from r1lite.orchestrate import pipeline

    try:
        with pipeline.stage(recipe, name) as (run_dir, tracker):
            yield run_dir, tracker
    except KeyboardInterrupt:
        _interrupted(name)


def run(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    restart: RestartOpt = False,
    wandb: WandbOpt = None,
    auto_fit: AutoFitOpt = False,
    gpus: GpusOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Run the whole pipeline: data -> base eval -> SFT -> GRPO -> final eval, printing before/after."""
    from r1lite.analyze.cost import cost_line
    from r1lite.machine.distributed import is_main, world_size
    from r1lite.orchestrate import pipeline
    from r1lite.runs.summary import comparison_table, steps_line, summary_change_lines
    from r1lite.ui import console

    if gpus is not None and world_size() == 1:  # not yet launched: become `accelerate launch ... r1lite run`
        argv = ["run", recipe, *(["--profile", profile] if profile else [])]
        argv += [x for s in set_ or [] for x in ("--set", s)]
        argv += [*(["--restart"] if restart else []), *(["--wandb", wandb] if wandb else [])]
        argv += ["--auto-fit"] if auto_fit else []
        _launch(argv, resolve_recipe(recipe, profile, set_), gpus, dry_run)
        return
    if dry_run:
        raise R1liteError("--dry-run goes with --gpus N")
    r = resolve_recipe(recipe, profile, [*(set_ or []), *([f"tracking.wandb={wandb}"] if wandb else [])])
    console.print(f"run [bold]{r.run_name}[/] -> {Path(r.output_dir) / r.run_name}")
    try:
        result = pipeline.run(r, restart=restart, auto_fit=auto_fit)
    except KeyboardInterrupt:
        _interrupted("the run")
    if not is_main():
        return
    console.print(comparison_table(result["base"], result["final"], r.data.make_task().name, result.get("warmup")))
    for line in summary_change_lines(result):
        console.print(line, soft_wrap=True)
    if steps := steps_line(result):
        console.print(steps)
    console.print(cost_line(result["cost"]))
    console.print(f"report: r1lite report {result['run_dir']}")


def sft(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    wandb: WandbOpt = None,
    auto_fit: AutoFitOpt = False,
    restart: RestartOpt = False,
) -> None:
    """LoRA SFT warm-up on solver traces or answer-only completions; writes runs/<run>/sft/adapter."""
    from r1lite.stages import sft as stage

    r = _recipe(recipe, profile, set_, wandb, auto_fit)
    with _stage(r, "sft") as (run_dir, tracker):
        _say(stage.run(r, run_dir.root, tracker, restart=restart))


def grpo(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    restart: RestartOpt = False,
    adapter: Annotated[
        str | None, typer.Option(help="start from this LoRA adapter (default: the run's SFT one)")
    ] = None,
    wandb: WandbOpt = None,
    auto_fit: AutoFitOpt = False,
) -> None:
    """GRPO with the recipe's (4-bit) policy + LoRA; writes runs/<run>/grpo/adapter."""
    from r1lite.stages import grpo as stage
    from r1lite.train.models import check_adapter, is_adapter

    start = check_adapter(adapter) if adapter else None
    r = _recipe(recipe, profile, set_, wandb, auto_fit)
    with _stage(r, "grpo") as (run_dir, tracker):
        if start is None and r.sft.enabled and is_adapter(run_dir.adapter("sft")):
            start = run_dir.adapter("sft")
        _say(stage.run(r, run_dir.root, start, restart=restart, tracker=tracker))


def eval_(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="model to evaluate (default: the recipe's)")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter to apply")] = None,
    compare: Annotated[str | None, typer.Option(help="a second adapter, or 'base', for a before/after table")] = None,
    label: Annotated[str | None, typer.Option(help="name of the output files under eval/")] = None,
    auto_fit: AutoFitOpt = False,
) -> None:
    """Evaluate a model (+ adapter) on the test split: accuracy, pass@k, format, length, search."""
    from r1lite.machine.distributed import is_main
    from r1lite.orchestrate import pipeline
    from r1lite.runs.summary import change_lines, comparison_table
    from r1lite.stages import evaluate as stage
    from r1lite.ui import console

    r = _recipe(recipe, profile, [*(set_ or []), *([f"model.name={model}"] if model else [])], auto_fit=auto_fit)
    run_dir = pipeline.stage_dir(r)
    # every process evaluates its share of the problems; the main one writes and prints
    result = stage.run(r, run_dir.root, adapter=adapter, label=label or ("adapter" if adapter else "base"))
    if compare:
        other = stage.run(
            r,
            run_dir.root,
            adapter=None if compare == "base" else compare,
            label="base" if compare == "base" else "compare",
        )
        if is_main():
            console.print(comparison_table(other, result, r.data.make_task().name))
            for line in change_lines(run_dir.changes([(result["label"], other["label"])])):
                console.print(line, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("sft")(sft)
    app.command("grpo")(grpo)
    app.command("eval")(eval_)
