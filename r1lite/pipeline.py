"""`r1lite run`: data -> base eval -> SFT -> warm-up eval -> GRPO -> final eval in one run directory.

    >>> summary = run(load_recipe("countdown", "cpu"))

Layout of `runs/<name>-<profile>/`: `config.yaml` (the resolved recipe), `stages.json` (each
finished stage's fingerprint and wall time), `sft/`, `grpo/` (checkpoints, metrics.jsonl,
adapter), `eval/` (base, warm-up and final JSONL + JSON). A stage whose fingerprint — a hash of the
recipe sections it reads plus its upstream stages' fingerprints — is unchanged is skipped, so
rerunning after an edit redoes exactly what the edit affects; a stage that another run in the same
output folder finished with the same fingerprint is copied from it instead of run again (the demo's
warm-up serves `-p cpu-rl`). Stage records are written only when a stage finishes, so an
interrupted run never looks finished. With SFT and GRPO both on, the warm-up adapter is evaluated
too, so the summary separates what imitation did from what RL did, each with a paired interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1lite import ui
from r1lite.config import Recipe
from r1lite.fileio import fingerprint, read_json, read_json_or_empty, write_json, write_text

STAGES = ("data", "eval_base", "sft", "eval_warmup", "grpo", "eval_final")
# what each stage leaves in the run directory: copied when another run finished the same stage
ARTIFACTS = {
    "eval_base": ("eval/base.json", "eval/base.jsonl"),
    "sft": ("sft/adapter", "sft/metrics.jsonl"),
    "eval_warmup": ("eval/warmup.json", "eval/warmup.jsonl"),
    "grpo": ("grpo/adapter", "grpo/metrics.jsonl"),
    "eval_final": ("eval/final.json", "eval/final.jsonl"),
}
CHANGES = (("final", "base"), ("warmup", "base"), ("final", "warmup"))  # (after, before) pairs in the summary


def enabled_stages(recipe: Recipe) -> list[str]:
    """The stages this recipe runs, in order (the warm-up eval only when SFT and GRPO both run)."""
    on = {
        "sft": recipe.sft.enabled,
        "eval_warmup": recipe.sft.enabled and recipe.grpo.enabled,
        "grpo": recipe.grpo.enabled,
    }
    return [s for s in STAGES if on.get(s, True)]


def run_dir(recipe: Recipe) -> Path:
    return Path(recipe.output_dir) / recipe.run_name


def samples_base(recipe: Recipe) -> bool:
    """Whether the base eval takes `eval.pass_k` samples too: only where GRPO's or SFT's effect is judged against
    the base model. With a warm-up before GRPO, GRPO is judged against the warm-up, and sampling a base model
    that cannot yet answer costs as much as the evals that matter (5 minutes of the CPU demo-rl)."""
    return not (recipe.sft.enabled and recipe.grpo.enabled)


def fingerprints(recipe: Recipe) -> dict[str, str]:
    """Per stage: a hash of what it reads, chained through its upstream stages."""
    from r1lite.models import cpu_bf16, uses_cuda

    r = recipe.model_dump(mode="json")
    # `cpu_bf16: auto` means what it resolves to here: a warm-up trained in bf16 is not one trained in fp32
    r["model"]["cpu_bf16"] = cpu_bf16(recipe.model, uses_cuda(recipe.model))
    fp: dict[str, str] = {"data": fingerprint(r["data"])}
    base = {"data": fp["data"], "model": r["model"], "quantization": r["quantization"]}
    greedy_base = {"samples": False} if recipe.eval.pass_k and not samples_base(recipe) else {}
    fp["eval_base"] = fingerprint({**base, "eval": r["eval"], **greedy_base})
    fp["sft"] = fingerprint({**base, "lora": r["lora"], "sft": r["sft"], "seed": r["seed"]})
    fp["eval_warmup"] = fingerprint({"trained": fp["sft"], "eval": r["eval"]})
    fp["grpo"] = fingerprint(
        {
            **base,
            "sft": fp["sft"] if recipe.sft.enabled else None,
            "lora": r["lora"],
            "grpo": r["grpo"],
            "seed": r["seed"],
        }
    )
    last = fp["grpo"] if recipe.grpo.enabled else fp["sft"] if recipe.sft.enabled else fp["eval_base"]
    fp["eval_final"] = fingerprint({"trained": last, "eval": r["eval"]})
    return fp


def load_state(root: Path) -> dict[str, Any]:
    return read_json_or_empty(root / "stages.json")


def _done(state: dict[str, Any], stage: str, fp: str, outputs: list[Path]) -> bool:
    return state.get(stage, {}).get("fingerprint") == fp and all(p.exists() for p in outputs)


def _reuse(root: Path, stage: str, fp: str) -> dict[str, Any] | None:
    """Copy `stage`'s outputs from another run in the same output folder (for a sweep's run, also from the runs
    beside the sweep's folder: `make demo-rl` reuses the demo's warm-up) that finished it with fingerprint `fp`.

    The fingerprint covers everything the stage read (its recipe sections and, through them, its upstream
    stages), so the copy is what running it here would make. Returns the stage record, or None.
    """
    import shutil

    folders = [root.parent]
    if (root.parent / "sweep.json").is_file():  # a sweep's run also copies from the runs beside its sweep folder
        folders.append(root.parent.parent)
    candidates = [p.parent for folder in folders for p in sorted(folder.glob("*/stages.json"))]
    for other in (c for c in candidates if c != root):
        record = load_state(other).get(stage, {})
        paths = ARTIFACTS.get(stage, ())
        if record.get("fingerprint") != fp or not paths or not all((other / a).exists() for a in paths):
            continue
        for artifact in paths:
            source, target = other / artifact, root / artifact
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                from r1lite.models import atomic_dir

                with atomic_dir(target) as tmp:
                    shutil.copytree(source, tmp, dirs_exist_ok=True)
            else:
                from r1lite.fileio import atomic_path

                with atomic_path(target) as tmp:
                    shutil.copyfile(source, tmp)
        ui.say(f"{stage}: {other} finished it with the same settings; copied its outputs")
        return {**record, "seconds": 0.0, "reused_from": str(other)}
    return None


def free_memory() -> None:
    """Return what a finished stage held before the next one loads a model.

    A stage's model, trainer, callbacks and rollout engines refer to each other in cycles, so they
    are freed by the cycle collector, not when the stage returns; on a 16 GB card the next stage
    cannot wait for it. Compiled decode steps are dropped too (their guards refer to the model).
    """
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def final_adapter(recipe: Recipe, root: Path) -> Path | None:
    if recipe.grpo.enabled:
        return root / "grpo" / "adapter"
    if recipe.sft.enabled:
        return root / "sft" / "adapter"
    return None


def run(recipe: Recipe, restart: bool = False, grpo_callbacks: list | None = None) -> dict[str, Any]:
    """Run every stage that is not already done; returns the summary written to summary.json.

    An interrupted stage continues from its last checkpoint (`restart` starts the training stages over).
    SIGTERM / SIGINT stop the run at the next safe point with everything needed to continue saved
    (r1lite.interrupts); running out of memory or disk stops it with one line saying what to change.
    """
    from r1lite.distributed import is_main
    from r1lite.interrupts import graceful
    from r1lite.tracking import Tracker, open_tracker

    root = run_dir(recipe)
    push = recipe.grpo.enabled and recipe.tracking.push_to_hub and is_main()
    grpo_done = push and _done(load_state(root), "grpo", fingerprints(recipe)["grpo"], [root / "grpo" / "adapter"])
    if push and not grpo_done:  # fail before hours of other stages
        from r1lite.hub import hub_ready

        hub_ready(recipe.tracking.push_to_hub, "tracking.push_to_hub")
    root.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(recipe, root) if is_main() else Tracker()  # one W&B run, from the main process
    try:
        with graceful("the run"):
            return _run(recipe, root, restart, grpo_callbacks, tracker)
    finally:
        tracker.finish()


def _run(recipe: Recipe, root: Path, restart: bool, grpo_callbacks: list | None, tracker: Any) -> dict[str, Any]:
    from r1lite.distributed import is_main, wait_for_everyone
    from r1lite.environment import describe
    from r1lite.interrupts import current, guard
    from r1lite.recipes import to_yaml
    from r1lite.stages import data, eval, grpo, sft

    main = is_main()  # with several processes, only the main one writes the run directory
    if main:
        write_text(root / "config.yaml", to_yaml(recipe))
        write_json(root / "hardware.json", describe())
    fps, state = fingerprints(recipe), load_state(root)
    sft_adapter = root / "sft" / "adapter"
    adapter = final_adapter(recipe, root)

    def grpo_stage() -> None:
        init = sft_adapter if recipe.sft.enabled else None
        grpo.run(recipe, root, init, restart=restart, callbacks=grpo_callbacks, tracker=tracker)

    plan: list[tuple[str, list[Path], Callable[[], Any]]] = [
        ("data", [], lambda: data.run(recipe.data)),
        (
            "eval_base",
            [root / "eval" / "base.json"],
            lambda: eval.run(recipe, root, label="base", tracker=tracker, sample=samples_base(recipe)),
        ),
        ("sft", [sft_adapter], lambda: sft.run(recipe, root, tracker, restart=restart)),
        (
            "eval_warmup",  # what imitation alone did, so the final eval can say what RL added
            [root / "eval" / "warmup.json"],
            lambda: eval.run(recipe, root, adapter=str(sft_adapter), label="warmup", tracker=tracker),
        ),
        ("grpo", [root / "grpo" / "adapter"], grpo_stage),
        (
            "eval_final",
            [root / "eval" / "final.json"],
            lambda: eval.run(recipe, root, adapter=str(adapter) if adapter else None, label="final", tracker=tracker),
        ),
    ]
    enabled = enabled_stages(recipe)
    main_only = {"data"}  # the main process prepares the data while the others wait; evals are split over all
    for stage, outputs, action in plan:
        if stage not in enabled:
            continue
        if stage != "data" and _done(state, stage, fps[stage], outputs):
            ui.log(f"[dim]{stage}: done earlier with the same settings; skipped[/]")
            continue
        if main and stage != "data" and (copied := _reuse(root, stage, fps[stage])) is not None:
            state[stage] = copied
            write_json(root / "stages.json", state)
        wait_for_everyone()
        if stage != "data" and _done(load_state(root), stage, fps[stage], outputs):  # copied from another run
            state[stage] = load_state(root)[stage]
            continue
        current().check(f"the run, before {stage}")  # a signal between stages: stop here
        ui.log(f"[bold]== {stage} ==[/]")
        start = time.monotonic()
        if main or stage not in main_only:
            with guard(recipe, stage, root):
                action()
        free_memory()
        wait_for_everyone()
        state[stage] = {
            "fingerprint": fps[stage],
            "seconds": round(time.monotonic() - start, 1),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "peak_rss_gib": _peak_rss_gib(),
        }
        if main:
            write_json(root / "stages.json", state)
    return write_summary(recipe, root, tracker) if main else {}


def _peak_rss_gib() -> float:
    """This process's resident-memory high-water mark so far: the stage that raises it is the one to look at."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 2**20, 2)


def write_summary(recipe: Recipe, root: Path, tracker: Any = None) -> dict[str, Any]:
    """summary.json: final metrics, before/after, per-stage wall time and cost."""
    from r1lite.cost import cost_for_run

    state = load_state(root)
    hardware = read_json_or_empty(root / "hardware.json")
    labels = ("base", "warmup", "final") if "eval_warmup" in state else ("base", "final")
    evals = {k: read_json(root / "eval" / f"{k}.json") for k in labels}
    cost = cost_for_run(recipe, {k: v["seconds"] for k, v in state.items()}, hardware)
    pairs = [c for c in CHANGES if all(k in evals for k in c)]
    summary = {
        "run": recipe.run_name,
        "run_dir": str(root),
        **evals,
        "metric": recipe.eval.metric_name(),  # declared in the recipe before the run
        "changes": paired_changes(root, pairs),
        "changes_sampled": paired_changes(root, pairs, "sampled"),
        "stages": state,
        "cost": cost,
        "hardware": hardware,
    }
    before, after = evals["base"], evals["final"]
    write_json(root / "summary.json", summary)
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


def paired_changes(root: Path, pairs: list[tuple[str, str]], metric: str = "greedy") -> dict[str, dict[str, float]]:
    """Change of each (after, before) pair of evals on the same problems, with a paired 95 % interval: of greedy
    accuracy, or of avg@k (`metric="sampled"`, for the pairs whose evals both sampled)."""
    from r1lite.report import paired_eval_rows
    from r1lite.stages.eval import problem_score
    from r1lite.stats import paired_difference

    out = {}
    for after, before in pairs:
        rows = paired_eval_rows(root, before, after)
        if rows and (metric == "greedy" or all(b.get("samples") and a.get("samples") for b, a in rows)):
            ci = paired_difference(
                [problem_score(b, metric) for b, _ in rows], [problem_score(a, metric) for _, a in rows]
            )
            out[f"{after}_vs_{before}"] = ci.as_dict()
    return out
