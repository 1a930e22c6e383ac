"""Rewards: `(completion, example) -> (reward, reason)` functions, the task's own plus the protocol's.

    >>> get_reward("countdown_tinyzero")("...<answer>1+2</answer>", {"nums": [1, 2], "target": 3})
    (1.0, 'correct')
    >>> get_reward("answer", load_task("rg:knights_knaves"))      # reasoning-gym's verifier
    >>> trl_reward_funcs(["countdown_tinyzero", "think_format"])   # for GRPOTrainer(reward_funcs=...)

A task brings its rewards (`Task.rewards()`); the ones here judge the `<think>/<answer>` protocol
and the behaviours the R1-Zero papers watch, for every task. `register` adds one more for all tasks.
The reason string is what `r1lite score` prints, so users can see why a completion scored 0.1.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from r1lite.errors import R1liteError
from r1lite.tasks import RewardFn, Task
from r1lite.tasks.registry import load_task

_REGISTRY: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Make a reward available to every task under `name`."""

    def deco(fn: RewardFn) -> RewardFn:
        _REGISTRY[name] = fn
        return fn

    return deco


@register("think_format")
def think_format(completion: str, example: Any = None) -> tuple[float, str]:
    """1.0 for exactly `...</think>\\n<answer>...</answer>` with nothing after it, else 0.0.

    The prompt opens `<think>`, so the completion may restate it only as its very first text.
    """
    body = completion.removeprefix("<think>")
    end = body.find("</think>")
    if end < 0:
        return 0.0, "no </think>"
    if "<think>" in body or body.count("</think>") > 1:
        return 0.0, "more than one think block"
    rest = body[end + 8 :]
    if not rest.startswith("\n<answer>"):
        return 0.0, "'</think>' is not followed by a newline and <answer>"
    if not rest.endswith("</answer>"):
        return 0.0, "text after </answer>" if "</answer>" in rest else "no </answer>"
    inner = rest[9:-9]
    if "<answer>" in inner or "</answer>" in inner:
        return 0.0, "more than one <answer> block"
    return 1.0, "well formed"


# Search behaviour: does a completion try more than one thing, or check itself?
_SEARCH = re.compile(
    r"\b(try|let'?s try|another|instead|back up|backtrack|doesn'?t work|does not work|not \d+|"
    r"too (big|large|small|high|low)|check|verify|alternatively|wait)\b",
    re.I,
)
_SELF_CHECK = re.compile(r"\b(check|checking|verify|verified|double[- ]check|confirm|wait)\b", re.I)


def shows_search(completion: str) -> bool:
    """True when the reasoning tries alternatives or verifies a result (two or more such cues)."""
    think = completion.split("</think>", 1)[0]
    return len(_SEARCH.findall(think)) >= 2


def self_checks(completion: str) -> bool:
    """True when the reasoning checks its own result ("Check: ...", "let me verify", "wait")."""
    return bool(_SELF_CHECK.search(completion.split("</think>", 1)[0]))


# Behaviour as rewards, so GRPO logs them every step at weight 0: the curves of the "aha" moment.
@register("search_behaviour")
def search_behaviour(completion: str, example: Any = None) -> tuple[float, str]:
    """1.0 when the reasoning tries alternatives or verifies (see `shows_search`); a behaviour, not correctness."""
    n = len(_SEARCH.findall(completion.split("</think>", 1)[0]))
    return (1.0 if n >= 2 else 0.0), f"{n} search cue{'s' * (n != 1)}"


@register("self_check")
def self_check(completion: str, example: Any = None) -> tuple[float, str]:
    """1.0 when the reasoning checks its own result; a behaviour, not correctness."""
    return (1.0, "checks its result") if self_checks(completion) else (0.0, "no self-check")


def _task(task: Task | str) -> Task:
    if isinstance(task, str):
        return load_task(task)
    return task


def rewards_for(task: Task | str = "countdown") -> dict[str, RewardFn]:
    """Every reward a recipe for `task` may name: the protocol's and the task's own (which win on a clash)."""
    return {**_REGISTRY, **_task(task).rewards()}


def reward_names(task: Task | str = "countdown") -> list[str]:
    return sorted(rewards_for(task))


def get_reward(name: str, task: Task | str = "countdown") -> RewardFn:
    """The reward called `name` for `task`; a typo gets the closest valid name."""
    table = rewards_for(task)
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(sorted(table))}"
        raise R1liteError(f"unknown reward '{name}' for task {_task(task).spec or task}; {hint}")
    return table[name]


def completion_text(completion: Any) -> str:
    """TRL passes a string for plain prompts and a list of messages for chat prompts."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] if completion else ""


# what GRPOTrainer passes a reward function besides the dataset's own columns
_TRL_KWARGS = {"prompts", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}


def examples_from(columns: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The batch's examples: our GRPO dataset's JSON `example` column, or any other columns row by row."""
    if "example" in columns:
        return [json.loads(e) if isinstance(e, str) else e for e in columns["example"]]
    cols = {k: v for k, v in columns.items() if k not in _TRL_KWARGS and isinstance(v, list | tuple) and len(v) == n}
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


class TRLReward:
    """A reward in TRL's `(completions, **columns) -> list[float]` form, named for logging.

    It keeps the first completion of its latest batch, with reward and reason, in `last_sample`
    for the live view and the W&B completions table.
    """

    def __init__(self, name: str, task: Task | str = "countdown") -> None:
        self.task = _task(task)
        self.__name__, self.fn = name, get_reward(name, self.task)
        self.last_sample: dict[str, Any] | None = None

    def __call__(self, completions: list[Any], **columns: Any) -> list[float]:
        texts = [completion_text(c) for c in completions]
        examples = examples_from(columns, len(texts))
        scored = [self.fn(c, ex) for c, ex in zip(texts, examples, strict=True)]
        if scored:
            self.last_sample = {
                "completion": texts[0],
                "problem": self.task.label(examples[0]),
                "reward": scored[0][0],
                "reason": scored[0][1],
            }
        return [reward for reward, _ in scored]


def trl_reward_funcs(names: Sequence[str], task: Task | str = "countdown") -> list[TRLReward]:
    task = _task(task)
    return [TRLReward(name, task) for name in names]
