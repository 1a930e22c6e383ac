"""A captured (CUDA-graph) decode step that proves itself: trusted only after matching eager decoding.

    >>> step = verified_capture(eager_step, cache, device, backend=None, on_fail=log)   # eager on any mismatch

`torch.compile(mode="reduce-overhead")` records the decode step once and replays it: one launch instead of hundreds
per token. A capture can fail on exotic layers or disagree with eager decoding (a kernel's rounding, a stale buffer),
so its first VERIFY_STEPS calls also run eagerly on the same input and are compared; any exception or mismatch falls
back to eager decoding with one logged line, and a CUDA error the capture left behind stops the run with the
setting to change.
"""

from __future__ import annotations

from typing import Any

import torch

from r1lite.errors import R1liteError

VERIFY_STEPS = 3  # captured decode steps checked against eager decoding before the graph is trusted


def synchronize(device: torch.device) -> None:
    """Wait for the device, raising the sticky CUDA error a broken capture leaves behind as one clear line."""
    if device.type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as e:
        raise R1liteError(
            f"a captured decode step left the GPU in an error state ({type(e).__name__}: {str(e)[:200]}); "
            "rerun with --set grpo.rollout_compile=false"
        ) from None


def rewinder(cache: Any) -> Any:
    """A function that puts the cache's write positions back where they are now (in place: graphs read them).

    transformers' static cache layers advance a `cumulative_length` counter on every update, so a step
    run twice would write its second K/V one slot further.
    """
    saved = [
        (layer.cumulative_length, layer.cumulative_length.clone())
        for layer in cache.layers
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)
    ]

    def rewind() -> None:
        for live, value in saved:
            live.copy_(value)

    return rewind


def agrees(out: torch.Tensor, reference: torch.Tensor) -> bool:
    """Compiled and eager logits agree to the noise of reordered low-precision sums (and are finite)."""
    if not torch.isfinite(out).all():
        return False
    tolerance = 0.02 * reference.abs().max().item() + 1e-3
    return (out.float() - reference.float()).abs().max().item() <= tolerance


def verified_capture(step: Any, cache: Any, device: torch.device, backend: Any, on_fail: Any, key: Any) -> Any:
    """`step` captured, checked against itself run eagerly for the first VERIFY_STEPS calls of each `key()` (a shape
    and a generation of the buffers: a new shape is a new graph, and rebuilt buffers may sit at new addresses).

    Each checked call runs the captured step, puts the cache's write positions back, runs `step` eagerly on the
    same input (it writes the same K/V last, so the cache is eager's whatever the captured step did), synchronises
    and compares. An exception or a mismatch calls `on_fail(why)` and decoding goes on eagerly; a CUDA error that
    outlives the failed capture raises here, with the setting to change. `backend` None: CUDA graphs; a tracing
    backend ("aot_eager") lets CPU tests run the same path.
    """
    # every shape (rows and window buckets) and every engine is one more compiled variant of `step`; allow plenty
    cfg = torch._dynamo.config
    limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, limit, max(getattr(cfg, limit), 64))
    if backend is None:
        compiled = torch.compile(step, mode="reduce-overhead", dynamic=False)
    else:
        compiled = torch.compile(step, backend=backend, dynamic=False)
    checked: dict[Any, int] = {}
    failed = [False]

    def fall_back(why: str) -> None:
        failed[0] = True
        on_fail(why)
        synchronize(device)  # a CUDA error that outlives the capture surfaces here, not in a later step

    def guarded(*args: torch.Tensor) -> torch.Tensor:
        if failed[0]:
            return step(*args)
        shape = key()
        if checked.get(shape, 0) >= VERIFY_STEPS:
            return compiled(*args).clone()  # the graph's output buffer is reused by the next replay
        rewind = rewinder(cache)
        try:
            out = compiled(*args).clone()
            synchronize(device)
        except Exception as e:  # capture can fail on exotic layers, before or after writing the cache
            rewind()
            fall_back(f"failed ({type(e).__name__}: {str(e)[:200]})")
            return step(*args)
        rewind()  # the eager step writes this token's K/V into the same slots, last: the cache holds eager's
        reference = step(*args)
        if not agrees(out, reference):
            fall_back(f"disagreed with eager decoding (max logit difference {(out - reference).abs().max():.3g})")
            return reference
        checked[shape] = checked.get(shape, 0) + 1
        return reference

    return guarded
