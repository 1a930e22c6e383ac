"""Failures a user can act on, as one line: out of device memory (exit 3, with settings that fit) or disk.

    >>> with guard(recipe, "grpo", run_dir): ...     # OOM: the measured peak beside the plan's, and what fits

Running out of GPU memory keeps the last checkpoint and names the `--set` values the plan says fit with more
room (saved for `--auto-fit`); a full disk names the path and the free space, and no finished file is replaced
(every write is atomic: r1lite.fileio).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from r1lite.errors import R1liteError
from r1lite.fileio import write_json
from r1lite.machine.distributed import world_size
from r1lite.plan import hardware, planner
from r1lite.plan.memory import HEADROOM
from r1lite.runs.rundir import Run


class OutOfMemory(R1liteError):
    """The device ran out of memory; the last checkpoint is kept and the message names settings that fit."""

    exit_code = 3


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
    peak = _measured_peak_gib()
    card = hardware.detected_card()
    planned, fix = None, {}
    if card is not None:
        with contextlib.suppress(R1liteError):
            predicted = planner.make_plan(recipe, card, gpus=world_size(), verdicts=False)
            planned = predicted.peak_gib
            # the plan underestimated this stage: ask it for settings with which the stage needs 15 % less than
            # the card offers, or than the plan gave it where that was less (another stage may be the run's peak)
            room = min(card.gib * (1 - HEADROOM), planner.stage_peak_gib(predicted, stage))
            _, fix = planner.auto_fit(recipe, card, gpus=world_size(), stage=stage, stage_gib=room * 0.85)
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
