"""Several processes, one run: who writes, who waits, how a global batch splits, how a launch looks.

    >>> r1lite run countdown --gpus 4                     # re-launches itself through `accelerate launch`
    >>> torchrun --nproc_per_node 2 -m r1lite run ...       # or any launcher that sets RANK / WORLD_SIZE
    >>> split_batch(64, 8, 4)                              # (8, 2): micro-batch 8 per process, 2 accumulation steps

r1lite does not run processes itself: accelerate (DDP or DeepSpeed ZeRO) and TRL do. This module
keeps r1lite's own parts correct under them: recipe batch sizes stay global (the same optimizer step
whatever the number of processes), data preparation and evals run on the main process while the
others wait, and only the main process writes the run directory, metrics and W&B.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from r1lite.errors import RecipeError

CONFIGS = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


def world_size() -> int:
    """Processes in this run (launchers set WORLD_SIZE); 1 when launched plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the run's processes (a no-op for one process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def split_batch(total: int, micro: int, processes: int, name: str = "grpo") -> tuple[int, int]:
    """(per-process micro-batch, accumulation steps) that make `total` sequences per optimizer step.

    The recipe's numbers are global; with N processes each process accumulates total / (micro x N)
    micro-batches. A split that does not divide is one line naming the process counts that work.
    """
    if total % (micro * processes) == 0:
        return micro, total // (micro * processes)
    if micro % processes == 0 and total % micro == 0:  # fewer sequences per process, same accumulation
        return micro // processes, total // micro
    valid = [n for n in range(1, total + 1) if total % (micro * n) == 0 or (micro % n == 0 and total % micro == 0)]
    raise RecipeError(
        f"{name}: {total} sequences per optimizer step do not split over {processes} processes with micro-batches "
        f"of {micro}; use {' or '.join(f'--gpus {n}' for n in valid if n > 1) or 'one process'}, or change the "
        f"{name} batch settings"
    )


def launch_command(argv: list[str], gpus: int, strategy: str, extra: list[str] | None = None) -> list[str]:
    """`accelerate launch` with the strategy's config and N processes, running `r1lite` with `argv`."""
    config = CONFIGS / f"{strategy}.yaml"
    return [
        "accelerate",
        "launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(gpus),
        *(extra or []),
        "-m",
        "r1lite",
        *argv,
    ]


def show(command: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in command)
