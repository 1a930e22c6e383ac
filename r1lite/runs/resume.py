"""Continuing: which checkpoints a stage may continue from, and training that can be stopped and continued.

    >>> key = resume_key(recipe, "grpo", init_adapter)         # what a checkpoint must share with the recipe
    >>> checkpoint = continue_from(out, "grpo", key, restart)   # the last complete one, or None after clearing
    >>> train(trainer, "grpo", checkpoint, nonfinite_limit=5, total=steps)

A checkpoint is used only if it is complete and loadable (else the one before it); one written for other
settings is cleared. Training stops at a step's end on a signal (r1lite.runs.signals), keeps a time budget,
skips non-finite updates and saves the last step too, so a finished stage can be extended.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.fileio import fingerprint, read_json_or_empty, read_jsonl, sha256_file, write_json, write_jsonl
from r1lite.machine import distributed
from r1lite.recipe.config import EFFECTS
from r1lite.runs.signals import StopAtStepEnd, current, synced


class NonFinite(R1liteError):
    """Too many updates in a row had NaN or infinite gradients; the last good checkpoint is kept."""


class SaveAtEnd(TrainerCallback):
    """A checkpoint at the last step too, so a finished stage can be extended (more steps) from where it ended."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_save = True


class TimeBudget(TrainerCallback):
    """Ends training at the first step end after `minutes` of it, with a checkpoint (the CPU demos' fixed budget).

    The time spent is saved with each checkpoint, so a run that was stopped and continued gets the same
    budget in all, and every process stops at the same step.
    """

    FILE = "time_budget.json"

    def __init__(self, minutes: float) -> None:
        self.seconds, self.before, self.start = minutes * 60, 0.0, time.monotonic()

    def resume_from(self, checkpoint: Path | None) -> None:
        self.before = read_json_or_empty(checkpoint / self.FILE).get("spent_s", 0.0) if checkpoint else 0.0

    def spent(self) -> float:
        return self.before + time.monotonic() - self.start

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if synced(self.spent() >= self.seconds) and not control.should_training_stop:
            control.should_training_stop = control.should_save = True
            ui.log(f"the {self.seconds / 60:g}-minute budget is spent; stopping after step {state.global_step}")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if distributed.is_main() and folder.is_dir():
            write_json(folder / self.FILE, {"spent_s": round(self.spent(), 1)})


class SkipNonFinite(TrainerCallback):
    """An update with NaN or infinite gradients is skipped (its gradients dropped before the optimizer step).

    AdamW leaves parameters without a gradient untouched, moments included. After `limit` such updates in a
    row training stops; the stage then raises NonFinite naming the first step and the likely cause.
    """

    def __init__(self, limit: int, on_skip: Any = None) -> None:
        self.limit, self.on_skip = limit, on_skip
        self.in_row = self.total = 0
        self.first: int | None = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import torch

        if getattr(args, "fp16", False):
            return  # fp16 (cards without bf16): the loss scaler skips overflowing steps and lowers its scale itself
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if synced(not finite):
            for p in model.parameters():
                p.grad = None
            self.in_row += 1
            self.total += 1
            self.first = state.global_step + 1 if self.first is None else self.first
            if self.on_skip is not None:
                self.on_skip(self, state.global_step + 1)
            if self.in_row >= self.limit:
                control.should_training_stop = True
        else:
            self.in_row = 0

    @property
    def gave_up(self) -> bool:
        return self.in_row >= self.limit

    def error(self, stage: str, checkpoint: Path | None) -> NonFinite:
        kept = f"the last good checkpoint is kept ({checkpoint.name})" if checkpoint else "no checkpoint was written"
        return NonFinite(
            f"{stage} stopped: {self.in_row} updates in a row had NaN or infinite gradients (first at step "
            f"{self.first}; {self.total} skipped in all); {kept}. Likely cause: a learning rate too high for this "
            f"policy, or fp16 overflow; lower {stage}.learning_rate and run again to continue"
        )


REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be used (a missing or damaged file), or None when it is complete.

    Under DeepSpeed (ZeRO) the optimizer state is in a `global_step*` folder instead of optimizer.pt.
    """
    import json

    deepspeed = any(path.glob("global_step*"))
    for name in REQUIRED:
        if not (path / name).is_file() and not (deepspeed and name != "trainer_state.json"):
            return f"{name} is missing"
    adapters = list(path.glob("adapter_model.safetensors")) or list(path.glob("model.safetensors"))
    if not adapters:
        return "no adapter_model.safetensors"
    try:
        json.loads((path / "trainer_state.json").read_text())
        from safetensors import safe_open

        with safe_open(str(adapters[0]), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                f.get_tensor(key)
        import torch

        if not deepspeed:
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        return f"a file does not load ({type(e).__name__}: {str(e)[:120]})"
    return None


def last_good_checkpoint(folder: Path, remove_damaged: bool = False, limit: int | None = None) -> Path | None:
    """The newest checkpoint-N (N <= `limit`) under `folder` that is complete; a damaged newer one is reported and
    skipped. With `remove_damaged`, an interrupted save (no trainer_state.json, which the trainer writes last) is
    deleted, so the trainer neither counts it nor writes over half of it."""
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for path in found:
        if limit is not None and checkpoint_step(path) > limit:
            continue  # trained past the stage's new end (fewer steps asked for): not this run's to continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        ui.warn(f"{path} is damaged ({problem}); using the checkpoint before it")
        if remove_damaged and not (path / "trainer_state.json").is_file():
            shutil.rmtree(path, ignore_errors=True)
    return None


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def resume_key(recipe: Any, stage: str, init_adapter: Path | None = None) -> str:
    """What a stage's checkpoints must share with the recipe to be continued: everything that shapes the
    trained weights (config.EFFECTS says which of the stage's settings do), the starting adapter's bytes."""
    r = recipe.model_dump(mode="json")
    own = {k: v for k, v in r[stage].items() if EFFECTS[stage][k] == "weights"}
    if stage == "sft":
        own["global_batch"] = recipe.sft.batch_size * recipe.sft.grad_accum
    weights = init_adapter / "adapter_model.safetensors" if init_adapter else None
    init = sha256_file(weights) if weights is not None and weights.is_file() else None
    common = {k: r[k] for k in ("data", "model", "quantization", "lora", "seed")}
    return fingerprint({**common, stage: own, "init": init})


def prune_metrics(path: Path, step: int) -> None:
    """Drop the lines a resumed stage will log again (those after the checkpoint it continues from)."""
    if path.is_file():
        write_jsonl(path, [row for row in read_jsonl(path) if row.get("step", 0) <= step])


def continue_from(out: Path, stage: str, key: str, restart: bool, limit: int | None = None) -> Path | None:
    """The checkpoint `stage` continues from in `out/trainer`, or None after clearing what cannot be continued.

    Checkpoints are continued when they were written for the same resume key (`resume_key`); otherwise,
    or with `restart`, they and the stage's metrics are cleared and the stage starts at step 0. Metrics
    logged after the checkpoint are dropped, as the stage logs those steps again. A checkpoint past `limit`
    (the stage's steps, when fewer are asked for than were trained) is never continued.
    """
    marker = out / "resume.json"
    same = read_json_or_empty(marker).get("key") == key
    usable = same and not restart
    checkpoint = last_good_checkpoint(out / "trainer", distributed.is_main(), limit) if usable else None
    if distributed.is_main():
        if checkpoint is None:
            if (out / "trainer").exists():
                why = "--restart" if restart else "its settings changed" if not same else "no usable checkpoint"
                ui.say(f"{stage}: starting over ({why})")
                shutil.rmtree(out / "trainer")
            (out / "metrics.jsonl").unlink(missing_ok=True)
            write_json(marker, {"key": key})
        else:
            prune_metrics(out / "metrics.jsonl", checkpoint_step(checkpoint))
    distributed.wait_for_everyone()
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        ui.say(f"{stage}: continuing from {checkpoint.name} (step {step}); --restart starts over")
    return checkpoint


def train(
    trainer: Any, stage: str, checkpoint: Path | None, nonfinite_limit: int, total: int, minutes: float = 0.0
) -> None:
    """`trainer.train()` that stops at a step's end on a signal (with a checkpoint), skips non-finite updates,
    keeps a time budget (`minutes`, 0: none) and saves a checkpoint at the last step; raises Interrupted or
    NonFinite after saving what it can. A checkpoint of the last step (`total`; the run stopped after training,
    before its adapter was written) is loaded, not trained on: resuming a finished trainer runs one step more."""
    if checkpoint is not None and checkpoint_step(checkpoint) >= total:
        trainer._load_from_checkpoint(str(checkpoint))
        return
    stop = current()
    if minutes:
        budget = TimeBudget(minutes)
        budget.resume_from(checkpoint)
        trainer.add_callback(budget)
    skips = SkipNonFinite(nonfinite_limit, on_skip=lambda s, step: ui.warn(
        f"{stage} step {step}: NaN or infinite gradients; this update is skipped ({s.in_row} in a row, {s.total} "
        "in all) [nonfinite]"
    ))  # fmt: skip
    for callback in (StopAtStepEnd(stop), SaveAtEnd(), skips):
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if skips.gave_up:
        raise skips.error(stage, last_good_checkpoint(Path(trainer.args.output_dir)))
    stop.check(stage, trainer.state.global_step)
