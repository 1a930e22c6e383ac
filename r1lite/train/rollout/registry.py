"""Engines live on the model they serve, so they die with it; one per model and buffer settings.

>>> engine = engine_for(model, tokenizer, RolloutSettings(max_new_tokens=96))   # reused by later calls
>>> release_engines(model)           # an eval's buffers freed at once (the GRPO trainer's own stay)
>>> engine_tensors(model)            # what they hold, for memory measurements
"""

from __future__ import annotations

import gc
from dataclasses import fields
from typing import Any

from r1lite.train.rollout.engine import LIVE, RolloutEngine, RolloutSettings
from r1lite.train.rollout.sampling import Sampling

_ENGINES_ATTR = "_r1lite_engines"
_SAMPLING = {f.name for f in fields(Sampling)}  # per call, not part of an engine's identity


def engine_for(model: Any, tokenizer: Any, settings: RolloutSettings) -> RolloutEngine:
    """One engine per model and buffer settings, kept on the model itself, so later calls reuse its buffers.

    Sampling settings are not part of the key (they are passed per call), so a greedy held-out eval
    inside GRPO runs on the training engine's cache and merged copy. Kept on the model, not in a
    module-level table: an engine holds its model, so a table entry would keep the model, cache,
    merged copy and captured graphs alive for the rest of the process.
    """
    engines = model.__dict__.setdefault(_ENGINES_ATTR, {})
    for engine in engines.values():  # the GRPO trainer's engine serves any caller with its length
        if engine.pinned and (engine.s.max_new_tokens, engine.s.stop_at_eos) == (
            settings.max_new_tokens,
            settings.stop_at_eos,
        ):
            return engine
    key = repr({k: v for k, v in vars(settings).items() if k not in _SAMPLING})
    if key not in engines:
        engines[key] = RolloutEngine(model, tokenizer, settings)
    return engines[key]


def release_engines(model: Any, pinned: bool = False) -> None:
    """Free the buffers of the engines `engine_for` made for `model`: the others are dropped; the GRPO trainer's own
    gives its memory back and stays for the next rollout, unless `pinned` (its trainer is done with it)."""
    engines = model.__dict__.get(_ENGINES_ATTR, {})
    for key, engine in list(engines.items()):
        if pinned or not engine.pinned:
            engine.close()
            del engines[key]
        else:
            engine.release()
    if not engines:
        model.__dict__.pop(_ENGINES_ATTR, None)


def engine_tensors(model: Any) -> list[Any]:
    """What the engines `engine_for` made for `model` hold (merged copies, caches, masks): the buffers a
    memory measurement must count beside the model and optimizer (`r1lite.train.memtrack.PeakTensorBytes`)."""
    return [t for engine in model.__dict__.get(_ENGINES_ATTR, {}).values() for t in engine.held()]


def live_engines() -> int:
    """Engines alive in this process, after a collection (a stage must leave none behind)."""
    gc.collect()
    return len(LIVE)
