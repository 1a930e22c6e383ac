"""Several processes, one run: who writes, who waits, how a global batch splits, how a launch looks.

    >>> r1lite run countdown --gpus 4                     # re-launches itself through `accelerate launch`
    >>> torchrun --nproc_per_node 2 -m r1lite run ...       # or any launcher that sets RANK / WORLD_SIZE
    >>> split_batch(64, 8, 4)                              # (8, 2): micro-batch 8 per process, 2 accumulation steps

r1lite does not run processes itself: accelerate (DDP or DeepSpeed ZeRO) and TRL do. This module
keeps r1lite's own parts correct under them: each process on its own GPU from its first CUDA call
(`pin_device`), one process group opened with r1lite's timeout (`start`), recipe batch sizes global
(the same optimizer step whatever the number of processes), evals split over the processes and
gathered (`shard`, `gather`), data preparation on the main process while the others wait, and only
the main process writing the run directory, metrics and W&B.
"""

from __future__ import annotations

import os
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Any

from r1lite.errors import RecipeError

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"


def world_size() -> int:
    """Processes in this run (launchers set WORLD_SIZE); 1 when launched plainly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's index on its machine, which is its GPU (launchers set LOCAL_RANK)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def pin_device() -> None:
    """Make this process's GPU the current one, before anything touches CUDA.

    CUDA calls without a device (a memory probe, `mem_get_info`, a tensor on "cuda") use the current
    device, which is GPU 0 until set: under `--gpus N` every rank would otherwise open a context on
    GPU 0 and put its probe, and with `device_map={"": 0}` its 4-bit model, there.
    """
    if world_size() == 1:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())


def process_state(**kwargs: Any) -> Any:
    """accelerate's process state, created once: on a machine without CUDA it must be told so (`cpu=True`), or it
    sees no accelerator, takes the run for a single process and every barrier returns at once."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), **kwargs)


def start(timeout_minutes: float) -> None:
    """Open the run's process group once, with a timeout that covers the longest wait at a barrier.

    The first `PartialState()` creates the group, and its timeout is final: NCCL's default (10 minutes)
    would apply if r1lite created it without one, and the Trainer's `ddp_timeout` comes too late.
    """
    if world_size() == 1:
        return
    process_state(timeout=timedelta(minutes=timeout_minutes))


def wait_for_everyone() -> None:
    """A barrier across the run's processes (a no-op for one process)."""
    if world_size() > 1:
        process_state().wait_for_everyone()


def shard(items: list[Any]) -> list[Any]:
    """This process's contiguous share of `items` (all of them for one process); `gather` undoes it in order."""
    n, size = len(items), world_size()
    per = -(-n // size)
    return items[rank() * per : (rank() + 1) * per]


def gather(items: list[Any]) -> list[Any]:
    """Every process's `items`, concatenated in rank order, on every process (a collective)."""
    if world_size() == 1:
        return items
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


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
