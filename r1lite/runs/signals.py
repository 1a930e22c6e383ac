"""Stopping well: a signal (SIGTERM, Ctrl-C) ends a stage at its next safe point, with what it needs to continue.

    >>> with graceful("grpo") as stop:                      # SIGTERM / SIGINT: finish the step, then stop
    ...     trainer.add_callback(StopAtStepEnd(stop))       # saves a checkpoint and ends training at the step's end
    ...     stop.check("grpo", trainer.state.global_step)   # raises Interrupted (exit 143 / 130) if a signal came

Cheap GPU hours are interruptible: spot instances get a SIGTERM and a short notice, SLURM sends one
before a job's time limit. Every stage takes the first signal as "stop at the next safe point" (the
end of an optimizer step, of an eval batch, or of the stage), writes what it needs to continue, and
exits with 143 (SIGTERM) or 130 (SIGINT) and one line saying how to continue; a second signal stops at
once. Nothing is ever half-written: every file r1lite writes is written atomically (r1lite.fileio).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.machine.distributed import process_state, world_size

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


DUPLICATE_S = 2.0  # a second signal sooner than this is the first one delivered twice, not a request to hurry


class Interrupted(R1liteError):
    """A signal stopped the run at a safe point; rerunning the same command continues it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


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
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=process_state().device)
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
