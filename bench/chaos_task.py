"""A task for bench/chaos.py: add two numbers, with a reward a random tiny model already earns unevenly.

Countdown's rewards give a random 2-layer model 0 for every completion, so its GRPO steps would move
nothing, and "the continued run has the same adapter" would hold whatever resume did. Here the reward
is the share of digits in a completion, which differs between samples from the first step on.
"""

from __future__ import annotations

import random

from r1lite.tasks import Task


class AddDigits(Task):
    name = "add_digits"
    description = "add two numbers; rewarded by the share of digits (a signal for random tiny models)"
    fields = ("a", "b")

    def sample(self, rng: random.Random) -> dict:
        return {"a": rng.randint(10, 99), "b": rng.randint(10, 99)}

    def question(self, ex: dict) -> str:
        return f"What is {ex['a']} + {ex['b']}?"

    def answer(self, ex: dict) -> str:
        return str(ex["a"] + ex["b"])

    def rewards(self) -> dict:
        def digit_share(completion: str, ex: dict) -> tuple[float, str]:
            digits = sum(c.isdigit() for c in completion)
            return digits / max(len(completion), 1), f"{digits} digits"

        return {**super().rewards(), "digit_share": digit_share}
