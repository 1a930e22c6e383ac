"""`r1lite run`: data -> base eval -> SFT -> warm-up eval -> GRPO -> final eval in one run directory.

    >>> summary = run(load_recipe("countdown", "cpu"))      # what `r1lite run countdown -p cpu` does
    >>> with stage(recipe, "sft") as (run_dir, tracker): ...  # one stage on its own (`r1lite sft`)

`prepare` does what every training command does before any work (device, precision, memory plan, backends,
process group), so Python callers get the same run as the CLI. The run directory and what is in it belong to
`r1lite.runs.rundir.Run`; this module decides which stages run, runs them, and records each when it finishes.
With SFT and GRPO both on, the warm-up adapter is evaluated too, so the summary separates what imitation did
from what RL did, each with a paired interval.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import torch

from r1lite import ui
from r1lite.analyze.cost import cost_for_run
from r1lite.analyze.environment import describe
from r1lite.errors import R1liteError
from r1lite.fileio import read_json, read_json_or_empty, write_json
from r1lite.machine import distributed
from r1lite.machine.precision import fit_precision
from r1lite.plan import hardware, planner
from r1lite.recipe.config import Recipe, check_backends, check_trl_sections
from r1lite.recipe.load import resolve
from r1lite.runs.failures import guard
from r1lite.runs.hub import hub_ready
from r1lite.runs.rundir import CHANGES, Run, enabled_stages, fingerprints, samples_base
from r1lite.runs.signals import current, graceful
from r1lite.runs.tracking import Tracker, open_tracker
from r1lite.stages import data, evaluate, grpo, sft
from r1lite.train import models


def prepare(recipe: Recipe, auto_fit: bool = False) -> Recipe:
    """The recipe as it will run, checked before any real work: this process's GPU pinned, the memory plan
    checked (or, `auto_fit`, applied together with what an out-of-memory stop of this run left), the device,
    precision, TRL pass-through keys and backends checked, and the process group opened with the recipe's timeout.
    """
    distributed.pin_device()
    if auto_fit:  # after running out of memory: the settings the plan then said fit (r1lite.runs.signals)
        recipe = _with_oom_settings(recipe)
    recipe = _fit(recipe, auto_fit)
    models.pick_device(recipe.model)
    recipe = fit_precision(recipe, hardware.probe())
    check_trl_sections(recipe)
    check_backends(recipe)
    _warn_time_guard(recipe)
    distributed.start(recipe.distributed.timeout_minutes)
    return recipe


def _warn_time_guard(recipe: Recipe) -> None:
    """Say before any work when grpo.max_minutes would stop GRPO short of its steps, by the plan's step time."""
    g = recipe.grpo
    if not (g.enabled and g.max_minutes):
        return
    try:
        plan = planner.make_plan(recipe, hardware.detected_card(), distributed.world_size(), verdicts=False)
    except R1liteError:  # a model the planner has no shape for: nothing to warn with
        return
    if plan.step_seconds and g.max_minutes * 60 < plan.step_seconds * g.max_steps:
        steps = int(g.max_minutes * 60 // plan.step_seconds)
        ui.warn(
            f"grpo.max_minutes={g.max_minutes:g} would stop GRPO after ~{steps} of its {g.max_steps} steps (the "
            f"plan prices a step at ~{plan.step_seconds:.0f} s here); raise it, or set 0 so the steps end the run"
        )


def _with_oom_settings(recipe: Recipe) -> Recipe:
    saved = Run.of(recipe).oom_settings()
    if not saved:
        return recipe
    ui.console.print("--auto-fit after running out of memory: " + ", ".join(f"{k}={v}" for k, v in saved.items()))
    return resolve(recipe.model_dump(mode="json"), None, [f"{k}={v}" for k, v in saved.items()], "--auto-fit")


def _fit(recipe: Recipe, auto_fit: bool) -> Recipe:
    """Refuse a GPU run `r1lite plan` says cannot fit this machine's card, or (auto_fit) adjust it to fit."""
    card = hardware.detected_card()
    if card is None or recipe.model.device == "cpu":
        return recipe  # host memory is not planned
    try:
        planner.shape_for(recipe.model.name)
    except R1liteError:
        ui.log(f"plan: the shape of {recipe.model.name} is unknown, so its memory was not checked")
        return recipe
    if not auto_fit:  # each process's share of the batch under --gpus N
        planner.check_fits(recipe, card, distributed.world_size())
        return recipe
    recipe, changes = planner.auto_fit(recipe, card, gpus=distributed.world_size())
    if changes:  # shown even with --quiet: the run differs from the recipe (config.yaml records it)
        ui.console.print("--auto-fit for " + card.name + ": " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return recipe


def free_memory() -> None:
    """Return what a finished stage held before the next one loads a model.

    A stage's model, trainer, callbacks and rollout engines refer to each other in cycles, so they
    are freed by the cycle collector, not when the stage returns; on a 16 GB card the next stage
    cannot wait for it. Compiled decode steps are dropped too (their guards refer to the model).
    """
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def stage_dir(recipe: Recipe) -> Run:
    """For a stage run on its own (`r1lite sft|grpo|eval`): the data ready and the recipe written into the run
    directory, by the main process while the others wait."""
    run_dir = Run.of(recipe)
    if distributed.is_main():
        data.run(recipe.data)
        run_dir.root.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(recipe)
    distributed.wait_for_everyone()
    return run_dir


@contextlib.contextmanager
def stage(recipe: Recipe, name: str) -> Iterator[tuple[Run, Any]]:
    """A training stage on its own: its run directory (`stage_dir`), the run's W&B tracker, signals stopping it at
    a step's end, and running out of memory or disk as one line."""
    run_dir = stage_dir(recipe)
    with _tracker(recipe, run_dir) as tracker, graceful(name), guard(recipe, name, run_dir.root):
        yield run_dir, tracker


@contextlib.contextmanager
def _tracker(recipe: Recipe, run_dir: Run) -> Iterator[Any]:
    """The run's one W&B run, opened by the main process (the others log nowhere), finished however the block ends."""
    tracker = open_tracker(recipe, run_dir.root) if distributed.is_main() else Tracker()
    try:
        yield tracker
    finally:
        tracker.finish()


def run(
    recipe: Recipe, restart: bool = False, grpo_callbacks: list | None = None, *, auto_fit: bool = False
) -> dict[str, Any]:
    """Prepare the recipe, then run every stage that is not already done; returns the summary (summary.json).

    An interrupted stage continues from its last checkpoint (`restart` starts the training stages over).
    SIGTERM / SIGINT stop the run at the next safe point with everything needed to continue saved
    (r1lite.runs.signals); running out of memory or disk stops it with one line saying what to change.
    """
    recipe = prepare(recipe, auto_fit)
    run_dir = Run.of(recipe)
    push = recipe.grpo.enabled and recipe.tracking.push_to_hub and distributed.is_main()
    if push and not run_dir.done("grpo", fingerprints(recipe)["grpo"]):  # fail before hours of other stages
        hub_ready(recipe.tracking.push_to_hub, "tracking.push_to_hub")
    run_dir.root.mkdir(parents=True, exist_ok=True)
    with _tracker(recipe, run_dir) as tracker, graceful("the run"):
        return _run(recipe, run_dir, restart, grpo_callbacks, tracker)


def _run(recipe: Recipe, run_dir: Run, restart: bool, grpo_callbacks: list | None, tracker: Any) -> dict[str, Any]:
    main = distributed.is_main()  # with several processes, only the main one writes the run directory
    if main:
        run_dir.write_config(recipe)
        write_json(run_dir.hardware_file, describe())
    fps, state, root = fingerprints(recipe), run_dir.state(), run_dir.root
    sft_adapter = run_dir.adapter("sft")

    def final_eval() -> Any:
        adapter = run_dir.trained_adapter(recipe)
        return evaluate.run(recipe, root, adapter=str(adapter) if adapter else None, label="final", tracker=tracker)

    actions: dict[str, Callable[[], Any]] = {
        "data": lambda: data.run(recipe.data),
        "eval_base": lambda: evaluate.run(recipe, root, label="base", tracker=tracker, sample=samples_base(recipe)),
        "sft": lambda: sft.run(recipe, root, tracker, restart=restart),
        # what imitation alone did, so the final eval can say what RL added
        "eval_warmup": lambda: evaluate.run(recipe, root, adapter=str(sft_adapter), label="warmup", tracker=tracker),
        "grpo": lambda: grpo.run(
            recipe,
            root,
            sft_adapter if recipe.sft.enabled else None,
            restart=restart,
            callbacks=grpo_callbacks,
            tracker=tracker,
        ),
        "eval_final": final_eval,
    }
    main_only = {"data"}  # the main process prepares the data while the others wait; evals are split over all
    for name in enabled_stages(recipe):
        if name != "data" and run_dir.done(name, fps[name], state):
            ui.log(f"[dim]{name}: done earlier with the same settings; skipped[/]")
            continue
        if main and name != "data" and (copied := run_dir.reuse(name, fps[name])) is not None:
            state[name] = copied
            run_dir.record(state)
        distributed.wait_for_everyone()
        if name != "data" and run_dir.done(name, fps[name]):  # copied from another run
            state[name] = run_dir.state()[name]
            continue
        current().check(f"the run, before {name}")  # a signal between stages: stop here
        ui.log(f"[bold]== {name} ==[/]")
        start = time.monotonic()
        if main or name not in main_only:
            with guard(recipe, name, root):
                actions[name]()
        free_memory()
        distributed.wait_for_everyone()
        state[name] = {
            "fingerprint": fps[name],
            "seconds": round(time.monotonic() - start, 1),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "peak_rss_gib": _peak_rss_gib(),
        }
        if main:
            run_dir.record(state)
    return write_summary(recipe, run_dir, tracker) if main else {}


def _peak_rss_gib() -> float:
    """This process's resident-memory high-water mark so far: the stage that raises it is the one to look at."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 2**20, 2)


def write_summary(recipe: Recipe, run_dir: Run, tracker: Any = None) -> dict[str, Any]:
    """summary.json: final metrics, before/after, per-stage wall time and cost."""
    state = run_dir.state()
    hardware = read_json_or_empty(run_dir.hardware_file)
    labels = ("base", "warmup", "final") if "eval_warmup" in state else ("base", "final")
    evals = {k: read_json(run_dir.eval_file(k)) for k in labels}
    cost = cost_for_run(recipe, {k: v["seconds"] for k, v in state.items()}, hardware)
    pairs = [c for c in CHANGES if all(k in evals for k in c)]
    summary = {
        "run": recipe.run_name,
        "run_dir": str(run_dir.root),
        **evals,
        "metric": recipe.eval.metric_name(),  # declared in the recipe before the run
        "grpo_steps": (
            {"trained": run_dir.trained_steps("grpo"), "planned": recipe.grpo.max_steps}
            if recipe.grpo.enabled
            else None
        ),
        "changes": run_dir.changes(pairs),
        "changes_sampled": run_dir.changes(pairs, "sampled"),
        "stages": state,
        "cost": cost,
        "hardware": hardware,
    }
    before, after = evals["base"], evals["final"]
    write_json(run_dir.summary_file, summary)
    if tracker is not None:
        tracker.summary(
            {
                "final/accuracy": after["accuracy"],
                "base/accuracy": before["accuracy"],
                "final/format_rate": after["format_rate"],
                "cost/usd": cost["total"]["usd"],
                "cost/gpu_hours": cost["total"]["gpu_hours"],
                "cost/wall_seconds": cost["total"]["seconds"],
            }
        )
    return summary
