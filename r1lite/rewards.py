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


def trl_reward_funcs(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """Wrap registered rewards in TRL's `(completions, **columns) -> list[float]` form, named for logging."""
    funcs = []
    for name in names:
        fn = get_reward(name)

        def wrapped(completions: list[Any], nums: list, target: list, _fn: RewardFn = fn, **_: Any) -> list[float]:
            return [_fn(completion_text(c), n, t)[0] for c, n, t in zip(completions, nums, target, strict=True)]

        wrapped.__name__ = name
        funcs.append(wrapped)
    return funcs
