"""What is going wrong in a GRPO run, named with its likely cause and the setting to change.

    >>> watch = Diagnostics(recipe)
    >>> watch.update({"truncated_rate": 0.82, ...})        # one logged step, our metric names
    [Finding(name='truncated', message='82 % of completions hit max_completion_length=256: ...')]
    >>> watch.active                                                    # what still holds at the latest step

The questions users of GRPO tools ask most ("why is my reward flat, why did accuracy fall") have a
handful of usual answers; each check below watches for one, from metrics TRL already logs (clipped
ratio, entropy, KL, completion length, the weight-0 accuracy and format rewards), the engine's
log-prob gap, and r1lite's own share of groups whose rewards are all equal (`groups_without_signal`).
A finding is reported when it starts; while it holds it stays in `active`, written with every
metrics line, and shown in the live view and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

WINDOW = 10  # logged steps a trend is measured over
MIN_TREND = 5  # fewer logged steps than this: no trend checks yet


@dataclass(frozen=True)
class Finding:
    name: str
    message: str


Metrics = dict[str, float]
Check = Callable[[Metrics, list[Metrics], Any], str | None]


def _truncated(m: Metrics, _h: list[Metrics], recipe: Any) -> str | None:
    ratio = m.get("truncated_rate")
    if ratio is None or ratio < 0.5:
        return None
    limit = recipe.grpo.max_completion_length
    return (
        f"{ratio:.0%} of completions hit max_completion_length={limit}: their answers are cut off and score 0; "
        "raise grpo.max_completion_length (or read the samples: the model may be rambling)"
    )


SIGNAL_RTOL = 1e-5  # rewards within this share of the batch's largest |reward| count as equal (float32 noise)


def groups_without_signal(rewards: Sequence[float], group: int) -> list[bool]:
    """For each group of `group` consecutive rewards: True when they are all equal, to float noise.

    A weighted sum of rewards in float32 is not exact: eight completions that all score 0.6 can have a
    std of 6e-8, which TRL's `torch.isclose(std, 0)` (absolute tolerance 1e-8) counts as signal. Here
    the spread of a group is compared with the rewards' own scale. `no_signal` and dynamic sampling
    both decide with this function.
    """
    scale = max((abs(r) for r in rewards), default=0.0)
    tolerance = SIGNAL_RTOL * scale + 1e-12
    groups = [rewards[i : i + group] for i in range(0, len(rewards), group)]
    return [max(g) - min(g) <= tolerance for g in groups]


def _no_signal(m: Metrics, _h: list[Metrics], recipe: Any) -> str | None:
    share = m.get("groups_no_signal")  # r1lite's own share (GRPOTrainer), not TRL's frac_reward_zero_std
    if share is None or share < 0.75:
        return None
    return (
        f"{share:.0%} of groups gave all {recipe.grpo.num_generations} completions the same reward: no learning "
        "signal; raise grpo.num_generations or grpo.temperature, or warm up with SFT so some answers are right"
    )


def _entropy_collapse(m: Metrics, _h: list[Metrics], _r: Any) -> str | None:
    entropy = m.get("entropy")
    if entropy is None or entropy >= 0.1:
        return None
    return (
        f"token entropy is {entropy:.3f} nats: the policy has become nearly deterministic and stops exploring; "
        "lower grpo.learning_rate or raise grpo.temperature"
    )


def _kl_drift(m: Metrics, _h: list[Metrics], recipe: Any) -> str | None:
    kl = m.get("kl")
    if not recipe.grpo.beta or kl is None or kl < 0.5:
        return None
    return f"KL to the reference is {kl:.2f}: the policy drifts fast; raise grpo.beta or lower grpo.learning_rate"


def _length_collapse(m: Metrics, history: list[Metrics], _r: Any) -> str | None:
    lengths = [h["completion_length"] for h in history[-WINDOW:] if "completion_length" in h]
    if len(lengths) < MIN_TREND or "completion_length" not in m:
        return None
    peak, now = max(lengths), m["completion_length"]
    if now >= 0.5 * peak:
        return None
    return (
        f"completion length fell from {peak:.0f} to {now:.0f} tokens over {len(lengths)} steps: the policy is "
        "dropping its reasoning; check that a short wrong answer does not score like a long one"
    )


def _reward_gaming(m: Metrics, history: list[Metrics], _r: Any) -> str | None:
    window = [h for h in history[-WINDOW:] if "format_rate" in h and "accuracy" in h]
    if len(window) < MIN_TREND or "format_rate" not in m or "accuracy" not in m:
        return None
    low_format, high_accuracy = min(h["format_rate"] for h in window), max(h["accuracy"] for h in window)
    if m["format_rate"] - low_format < 0.2 or high_accuracy - m["accuracy"] < 0.05:
        return None
    return (
        f"format rate rose from {low_format:.0%} to {m['format_rate']:.0%} while accuracy fell from "
        f"{high_accuracy:.0%} to {m['accuracy']:.0%} within {len(window)} steps: the format reward is being gamed; "
        "lower its weight in grpo.rewards"
    )


def _logprob_gap(m: Metrics, _h: list[Metrics], _r: Any) -> str | None:
    gap = m.get("rollout_logprob_gap")
    if gap is None or gap < 0.1:
        return None
    capped = m.get("rollout_is_clipped")
    note = f" ({capped:.0%} of tokens hit the importance-sampling cap)" if capped is not None else ""
    return (
        f"the rollout engine and the trainer disagree by {gap:.2f} nats per token{note}: samples come from a "
        "different policy than the one trained; set grpo.rollout_merge=unmerged or grpo.rollout=trl"
    )


CHECKS: dict[str, Check] = {
    "truncated": _truncated,
    "no_signal": _no_signal,
    "entropy_collapse": _entropy_collapse,
    "kl_drift": _kl_drift,
    "length_collapse": _length_collapse,
    "reward_gaming": _reward_gaming,
    "logprob_gap": _logprob_gap,
}


class Diagnostics:
    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        self.history: list[Metrics] = []
        self.active: dict[str, str] = {}

    def update(self, metrics: Metrics) -> list[Finding]:
        """Run every check on one logged step; returns the findings that start at this step."""
        started = []
        holding = {}
        for name, check in CHECKS.items():
            message = check(metrics, self.history, self.recipe)
            if message is not None:
                holding[name] = message
                if name not in self.active:
                    started.append(Finding(name, message))
        self.active = holding
        self.history.append(metrics)
        return started
