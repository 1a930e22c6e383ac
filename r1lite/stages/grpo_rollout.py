"""The GRPO stage's rollouts through r1lite's engine: TRL's `rollout_func` contract, from the recipe.

    >>> trainer = GRPOTrainer(..., rollout_func=make_rollout_func(settings_from_recipe(recipe, planned_merge)))

TRL calls `rollout_func(prompts, trainer)` for each generation batch and keeps its loss, logging and
checkpointing; the engine returns prompt and completion ids with the sampler's log-probs, which the trainer
compares with its own (`rollout/logprob_gap`) and corrects for (r1lite.train.grpo_trainer). After each rollout
the engine gives its cache and merged copy back (`RolloutEngine.release`); the next rollout rebuilds them from the
4-bit base and the adapter as it then is (`rollout/rebuild_s`).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from r1lite import ui
from r1lite.errors import R1liteError
from r1lite.machine.precision import cpu_bf16, uses_cuda
from r1lite.train.rollout.engine import RolloutSettings
from r1lite.train.rollout.registry import engine_for


def settings_from_recipe(recipe: Any, planned_merge: bool | None = None) -> RolloutSettings:
    """The GRPO engine's settings; `planned_merge` is `r1lite plan`'s decision, logged beside the engine's."""
    g = recipe.grpo
    return RolloutSettings(
        planned_merge=planned_merge,
        dtype="bfloat16" if cpu_bf16(recipe.model, uses_cuda(recipe.model)) else None,
        max_new_tokens=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        merge=g.rollout_merge,
        compile=g.rollout_compile,
        train=True,
    )


def make_rollout_func(settings: RolloutSettings) -> Any:
    """A `rollout_func(prompts, trainer)` for GRPOTrainer that generates with our engine."""
    # rollout_func is marked experimental in TRL; we pin TRL's minor version and test the contract
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    state: dict[str, Any] = {}

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        engine = engine_for(model, trainer.processing_class, settings)
        engine.pinned = True
        if not isinstance(prompts[0], str):
            raise R1liteError("the rollout engine takes rendered text prompts; use data.prompt_format base/chat")
        prompt_ids = trainer.processing_class(text=prompts)["input_ids"]
        mode = "train" if model.training else "eval"
        G = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        with _timer() as elapsed:
            # its own sampling settings: the engine may be one an eval made (greedy), reused for its buffers
            out = engine.generate(prompt_ids, num_generations=G, sampling=settings)
        engine.release()  # rollout and training time-share the device: scoring and training never hold the buffers
        metrics = trainer._metrics[mode]
        metrics["rollout/tokens_per_s"].append(out.stats["tokens"] / max(elapsed(), 1e-9))
        metrics["rollout/rebuild_s"].append(out.stats["rebuild_s"])
        metrics["rollout/merged"].append(float(out.stats["merged"]))
        metrics["rollout/compiled"].append(float(out.stats["compiled"]))
        choice = f"{out.stats['choice']}; decode step {'captured' if out.stats['compiled'] else 'eager'}"
        if state.get("logged") != choice:
            ui.log(f"rollout engine: {choice}")
            state["logged"] = choice
        return {"prompt_ids": out.prompt_ids, "completion_ids": out.completion_ids, "logprobs": out.logprobs}

    return rollout_func


@contextlib.contextmanager
def _timer():
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())
