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
# continuing is the default now; --resume stays accepted (and hidden) so scripts that pass it keep working
ResumeOpt = Annotated[bool, typer.Option("--resume", hidden=True, help="(the default: runs continue)")]
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
    """The resolved recipe, after checking memory, precision, device and TRL pass-through keys (before any real work).

    Under several processes each is put on its own GPU first (the profile probe is the first CUDA call),
    and the process group opens with the recipe's timeout.
    """
    from r1lite import distributed
    from r1lite.config import check_backends, check_trl_sections
    from r1lite.hardware import probe
    from r1lite.models import fit_precision, pick_device

    distributed.pin_device()
    sets = [*(set_ or []), *([f"tracking.wandb={wandb}"] if wandb else [])]
    recipe = resolve_recipe(name, profile, sets)
    if auto_fit:  # after running out of memory: the settings the plan then said fit (r1lite.interrupts)
        recipe = resolve_recipe(name, recipe.profile, [*sets, *_oom_settings(recipe)])
    recipe = _fit(recipe, auto_fit)
    pick_device(recipe.model)
    recipe = fit_precision(recipe, probe())
    check_trl_sections(recipe)
    check_backends(recipe)
    distributed.start(recipe.distributed.timeout_minutes)
    return recipe


def _oom_settings(recipe: Any) -> list[str]:
    """`key=value` settings an out-of-memory stop of this run left for --auto-fit (none otherwise)."""
    from r1lite.fileio import read_json_or_empty
    from r1lite.interrupts import OOM_FILE
    from r1lite.pipeline import run_dir
    from r1lite.ui import console

    saved = read_json_or_empty(run_dir(recipe) / OOM_FILE).get("settings", {})
    if saved:
        console.print("--auto-fit after running out of memory: " + ", ".join(f"{k}={v}" for k, v in saved.items()))
    return [f"{k}={v}" for k, v in saved.items()]


def _fit(recipe: Any, auto_fit: bool) -> Any:
    """Refuse a GPU run `r1lite plan` says cannot fit this machine's card, or (--auto-fit) adjust it to fit."""
    from r1lite import plan, ui

    card = plan.detected_card()
    if card is None or recipe.model.device == "cpu":
        return recipe  # host memory is not planned
    try:
        plan.shape_for(recipe.model.name)
    except R1liteError:
        ui.log(f"plan: the shape of {recipe.model.name} is unknown, so its memory was not checked")
        return recipe
    from r1lite.distributed import world_size

    if not auto_fit:  # each process's share of the batch under --gpus N
        plan.check_fits(recipe, card, world_size())
        return recipe
    recipe, changes = plan.auto_fit(recipe, card, gpus=world_size())
    if changes:  # shown even with --quiet: the run differs from the recipe (config.yaml records it)
        ui.console.print("--auto-fit for " + card.name + ": " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return recipe


def _stage_dir(r):
    """The data and the run directory for a single-stage command, with the resolved recipe written into it.

    With several processes the main one prepares both while the others wait.
    """
    from r1lite.distributed import is_main, wait_for_everyone
    from r1lite.fileio import write_text
    from r1lite.pipeline import run_dir
    from r1lite.recipes import to_yaml
    from r1lite.stages import data

    root = run_dir(r)
    if is_main():
        data.run(r.data)
        root.mkdir(parents=True, exist_ok=True)
        write_text(root / "config.yaml", to_yaml(r))
    wait_for_everyone()
    return root


def _launch(argv: list[str], recipe: Any, gpus: int, dry_run: bool) -> None:
    """Print (dry run) or exec the `accelerate launch` command that runs `r1lite <argv>` on `gpus` processes."""
    import os
    import shutil
    import sys

    from r1lite.config import check_backends
    from r1lite.distributed import launch_command, show, split_batch
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
    # finish their step and write a checkpoint (r1lite.interrupts)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "900")
    os.execv(launcher, [launcher, *command[1:]])


def _say(path: Path) -> None:
    """Print a stage's output path once, from the main process."""
    from r1lite.distributed import is_main

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
def _tracked(recipe: Any, root: Path, stage: str) -> Iterator[Any]:
    """One training stage on its own: its W&B tracker, signals stopping it at a step's end (r1lite.interrupts),
    running out of memory or disk as one line, a second Ctrl-C as exit code 130."""
    from r1lite.distributed import is_main
    from r1lite.interrupts import graceful, guard
    from r1lite.tracking import Tracker, open_tracker

    tracker = open_tracker(recipe, root) if is_main() else Tracker()  # one W&B run, from the main process
    try:
        with graceful(stage), guard(recipe, stage, root):
            yield tracker
    except KeyboardInterrupt:
        _interrupted(stage)
    finally:
        tracker.finish()


def run(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    restart: RestartOpt = False,
    resume: ResumeOpt = False,
    wandb: WandbOpt = None,
    auto_fit: AutoFitOpt = False,
    gpus: GpusOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Run the whole pipeline: data -> base eval -> SFT -> GRPO -> final eval, printing before/after."""
    from r1lite import pipeline
    from r1lite.cost import cost_line
    from r1lite.distributed import is_main, world_size
    from r1lite.stages.eval import comparison_table, summary_change_lines
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
    r = _recipe(recipe, profile, set_, wandb, auto_fit)
    console.print(f"run [bold]{r.run_name}[/] -> {pipeline.run_dir(r)}")
    try:
        result = pipeline.run(r, restart=restart)
    except KeyboardInterrupt:
        _interrupted("the run")
    if not is_main():
        return
    console.print(comparison_table(result["base"], result["final"], r.data.make_task().name, result.get("warmup")))
    for line in summary_change_lines(result):
        console.print(line, soft_wrap=True)
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
    root = _stage_dir(r)
    with _tracked(r, root, "sft") as tracker:
        _say(stage.run(r, root, tracker, restart=restart))


def grpo(
    recipe: RecipeArg = "countdown",
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    restart: RestartOpt = False,
    resume: ResumeOpt = False,
    adapter: Annotated[
        str | None, typer.Option(help="start from this LoRA adapter (default: the run's SFT one)")
    ] = None,
    wandb: WandbOpt = None,
    auto_fit: AutoFitOpt = False,
) -> None:
    """GRPO with the recipe's (4-bit) policy + LoRA; writes runs/<run>/grpo/adapter."""
    from r1lite.stages import grpo as stage

    r = _recipe(recipe, profile, set_, wandb, auto_fit)
    start = Path(adapter) if adapter else None
    if start is not None and not (start / "adapter_config.json").is_file():
        raise R1liteError(f"--adapter {adapter} is not a LoRA adapter folder (no adapter_config.json)")
    root = _stage_dir(r)
    if start is None and r.sft.enabled and (root / "sft" / "adapter").is_dir():
        start = root / "sft" / "adapter"
    with _tracked(r, root, "grpo") as tracker:
        _say(stage.run(r, root, start, restart=restart, tracker=tracker))


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
    from r1lite.distributed import is_main
    from r1lite.stages import eval as stage
    from r1lite.stages.eval import comparison_table
    from r1lite.ui import console

    r = _recipe(recipe, profile, [*(set_ or []), *([f"model.name={model}"] if model else [])], auto_fit=auto_fit)
    root = _stage_dir(r)
    # every process evaluates its share of the problems; the main one writes and prints
    result = stage.run(r, root, adapter=adapter, label=label or ("adapter" if adapter else "base"))
    if compare:
        other = stage.run(
            r, root, adapter=None if compare == "base" else compare, label="base" if compare == "base" else "compare"
        )
        if is_main():
            from r1lite.pipeline import paired_changes
            from r1lite.stages.eval import change_lines

            console.print(comparison_table(other, result, r.data.make_task().name))
            for line in change_lines(paired_changes(root, [(result["label"], other["label"])])):
                console.print(line, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("sft")(sft)
    app.command("grpo")(grpo)
    app.command("eval")(eval_)
