"""Reward registry: tasks register `(completion, **example) -> (reward, reason)` functions by name.

    >>> get_reward("countdown_tinyzero")("...<answer>1+2</answer>", nums=[1, 2], target=3)
    (1.0, 'correct')
    >>> trl_reward_funcs(["countdown_tinyzero", "think_format"])   # for GRPOTrainer(reward_funcs=...)

The reason string is what `r1lite score` prints, so users can see why a completion scored 0.1.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

from r1lite.errors import R1liteError

RewardFn = Callable[..., tuple[float, str]]
_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    def deco(fn: RewardFn) -> RewardFn:
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_tasks() -> None:
    import r1lite.tasks.countdown  # noqa: F401  (registers its rewards)


def reward_names() -> list[str]:
    _load_tasks()
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward called `name`; a typo gets the closest valid name."""
    _load_tasks()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(sorted(_REGISTRY))}"
        raise R1liteError(f"unknown reward '{name}'; {hint}")
    return _REGISTRY[name]


def completion_text(completion: Any) -> str:
    """TRL passes a string for plain prompts and a list of messages for chat prompts."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


class TRLReward:
    """A registered reward in TRL's `(completions, **columns) -> list[float]` form, named for logging.

    It keeps the first completion of its latest batch, with reward and reason, in `last_sample`
    for the live view and the W&B completions table.
    """

    def __init__(self, name: str) -> None:
        self.__name__, self.fn = name, get_reward(name)
        self.last_sample: dict[str, Any] | None = None

    def __call__(self, completions: list[Any], nums: list, target: list, **_: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        scored = [self.fn(c, n, t) for c, n, t in zip(texts, nums, target, strict=True)]
        if scored:
            self.last_sample = {
                "completion": texts[0],
                "nums": list(nums[0]),
                "target": target[0],
                "reward": scored[0][0],
                "reason": scored[0][1],
            }
        return [reward for reward, _ in scored]


def trl_reward_funcs(names: Sequence[str]) -> list[TRLReward]:
    return [TRLReward(name) for name in names]
