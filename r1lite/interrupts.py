"""Runs that survive: signals, checkpoints you can trust, running out of memory, non-finite numbers, a full disk.

    >>> with graceful("grpo") as stop:                      # SIGTERM / SIGINT: finish the step, then stop
    ...     trainer.add_callback(StopAtStepEnd(stop))       # saves a checkpoint and ends training at the step's end
    ...     trainer.train(resume_from_checkpoint=...)
    ...     stop.check("grpo", trainer.state.global_step)   # raises Interrupted (exit 143 / 130) if a signal came
    >>> last_good_checkpoint(out / "trainer")               # complete and loadable, else the one before it
    >>> with guard(recipe, "grpo"): ...                     # out of memory: exit 3 with settings that fit

Cheap GPU hours are interruptible: spot instances get a SIGTERM and a short notice, SLURM sends one
before a job's time limit. Every stage takes the first signal as "stop at the next safe point" (the
end of an optimizer step, of an eval batch, or of the stage), writes what it needs to continue, and
exits with 143 (SIGTERM) or 130 (SIGINT) and one line saying how to continue; a second signal stops at
once. Nothing is ever half-written: every file r1lite writes is written atomically (r1lite.fileio),
and a checkpoint is used only if it is complete.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.runs.rundir import Run

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
DUPLICATE_S = 2.0  # a second signal sooner than this is the first one delivered twice, not a request to hurry


class Interrupted(R1liteError):
    """A signal stopped the run at a safe point; rerunning the same command continues it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class OutOfMemory(R1liteError):
    """The device ran out of memory; the last checkpoint is kept and the message names settings that fit."""

    exit_code = 3


class NonFinite(R1liteError):
    """Too many updates in a row had NaN or infinite gradients; the last good checkpoint is kept."""


@dataclass
class Stop:
    """What the signal handlers saw: the first signal asks to stop at the next safe point."""

    signum: int | None = None
    stage: str = ""
    count: int = 0
    at: float = 0.0  # when the first signal came (time.monotonic)
    _lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self, where: str, step: int | None = None) -> None:
        """Raise Interrupted if a signal came in (call it at a safe point, after state is written)."""
        if self.signum is None:
            return
        at = f" after step {step}" if step else ""
        name = signal.Signals(self.signum).name
        raise Interrupted(
            f"stopped by {name} during {where}{at}; everything finished so far is saved. Run the same command again "
            "to continue from there (--restart starts the stage over)",
            EXIT_CODES.get(self.signum, 130),
        )


_CURRENT = Stop()


def current() -> Stop:
    """The stop request of the stage running now (one per process)."""
    return _CURRENT


@contextlib.contextmanager
def graceful(stage: str) -> Iterator[Stop]:
    """SIGTERM and SIGINT set `Stop.signum` (the stage stops at its next safe point); a second one stops at once."""
    global _CURRENT
    stop = Stop(stage=stage)
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handle(signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if stop.signum is not None and now - stop.at < DUPLICATE_S:
            return  # the same stop twice: a terminal's Ctrl-C and the launcher forwarding it under --gpus
        stop.count += 1
        if stop.count > 1:
            raise KeyboardInterrupt  # the second signal: stop now (atomic writes leave nothing half-written)
        stop.signum, stop.at = signum, now
        ui.warn(
            f"{signal.Signals(signum).name}: {stage} stops after the current step and saves what it needs to "
            "continue; send it again to stop at once"
        )

    previous = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s in EXIT_CODES:
        signal.signal(s, handle)
    _CURRENT, outer = stop, _CURRENT
    try:
        yield stop
    finally:
        _CURRENT = outer
        for s, handler in previous.items():
            signal.signal(s, handler)


def synced(flag: bool) -> bool:
    """`flag` agreed over every process of the run (any of them), so all stop at the same step."""
    from r1lite.distributed import world_size

    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    value = torch.tensor([float(flag)], device=PartialState().device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopAtStepEnd(TrainerCallback):
    """Ends training at the end of the step during which a signal came, with a checkpoint of that step."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if synced(self.stop.requested):
            if self.stop.signum is None:  # another process got the signal: stop with it, as if it were ours
                self.stop.signum = signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True


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
        from r1lite.fileio import read_json_or_empty

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
        from r1lite.distributed import is_main
        from r1lite.fileio import write_json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if is_main() and folder.is_dir():
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


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Out of memory, full disk
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def guard(recipe: Any, stage: str, run_dir: Path | None = None) -> Iterator[None]:
    """Turn running out of device memory or disk into one line with what to do (exit 3 and 2)."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        raise out_of_memory(recipe, stage, run_dir) from None
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(e) from None
    except RuntimeError as e:  # torch.save (checkpoints) reports a full disk as a failed write
        if "write" not in str(e).lower() or shutil.disk_usage(run_dir or ".").free > 64 * 2**20:
            raise
        raise disk_full(OSError(errno.ENOSPC, str(e), str(run_dir or "."))) from None


def out_of_memory(recipe: Any, stage: str, run_dir: Path | None) -> OutOfMemory:
    """The measured peak beside the plan's, and the settings the plan says fit with more room; saved for --auto-fit."""
    from r1lite import plan
    from r1lite.fileio import write_json

    peak = _measured_peak_gib()
    card = plan.detected_card()
    planned, fix = None, {}
    if card is not None:
        from r1lite.distributed import world_size

        with contextlib.suppress(R1liteError):
            predicted = plan.make_plan(recipe, card, gpus=world_size(), verdicts=False)
            planned = predicted.peak_gib
            # the plan underestimated this run: ask it for settings that fit a card with 15 % less memory
            smaller = plan.Card(card.name, card.gib * 0.85)
            _, fix = plan.auto_fit(recipe, smaller, gpus=world_size())
    if run_dir is not None and fix:
        write_json(Run(run_dir).oom_file, {"stage": stage, "settings": fix})
    measured = f"measured peak {peak:.1f} GiB" if peak is not None else "peak not measured"
    versus = f" vs the plan's {planned:.1f} GiB" if planned is not None else ""
    settings = " ".join(f"--set {k}={v}" for k, v in fix.items())
    todo = (
        f"; these fit with more room: {settings} (or rerun with --auto-fit to apply them and continue)"
        if settings
        else "; lower grpo.micro_batch_size, eval.batch_size or grpo.max_completion_length"
    )
    return OutOfMemory(f"out of GPU memory during {stage} ({measured}{versus}); the last checkpoint is kept{todo}")


def _measured_peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def disk_full(err: OSError) -> R1liteError:
    where = Path(err.filename or ".")
    target = where if where.exists() else where.parent if where.parent.exists() else Path(".")
    free = shutil.disk_usage(target).free / 2**20
    return R1liteError(
        f"could not write {err.filename or 'a file'}: the disk is full ({free:.0f} MiB free there); no finished file "
        "was replaced. Free some space and run the same command again to continue"
    )


# ----------------------------------------------------------------------------------------------
# Which checkpoints a stage may continue from
# ----------------------------------------------------------------------------------------------


def resume_key(recipe: Any, stage: str, init_adapter: Path | None = None) -> str:
    """What a stage's checkpoints must share with the recipe to be continued: everything that shapes the
    trained weights (config.EFFECTS says which of the stage's settings do), the starting adapter's bytes."""
    from r1lite.config import EFFECTS
    from r1lite.fileio import fingerprint, sha256_file

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
    from r1lite.fileio import read_jsonl, write_jsonl

    if path.is_file():
        write_jsonl(path, [row for row in read_jsonl(path) if row.get("step", 0) <= step])


def continue_from(out: Path, stage: str, key: str, restart: bool, limit: int | None = None) -> Path | None:
    """The checkpoint `stage` continues from in `out/trainer`, or None after clearing what cannot be continued.

    Checkpoints are continued when they were written for the same resume key (`resume_key`); otherwise,
    or with `restart`, they and the stage's metrics are cleared and the stage starts at step 0. Metrics
    logged after the checkpoint are dropped, as the stage logs those steps again. A checkpoint past `limit`
    (the stage's steps, when fewer are asked for than were trained) is never continued.
    """
    from r1lite.distributed import is_main, wait_for_everyone
    from r1lite.fileio import read_json_or_empty, write_json

    marker = out / "resume.json"
    same = read_json_or_empty(marker).get("key") == key
    usable = same and not restart
    checkpoint = last_good_checkpoint(out / "trainer", is_main(), limit) if usable else None
    if is_main():
        if checkpoint is None:
            if (out / "trainer").exists():
                why = "--restart" if restart else "its settings changed" if not same else "no usable checkpoint"
                ui.say(f"{stage}: starting over ({why})")
                shutil.rmtree(out / "trainer")
            (out / "metrics.jsonl").unlink(missing_ok=True)
            write_json(marker, {"key": key})
        else:
            prune_metrics(out / "metrics.jsonl", checkpoint_step(checkpoint))
    wait_for_everyone()
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
