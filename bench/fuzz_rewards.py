"""Rewards at scale: random and hostile completions through every Countdown reward and five reasoning-gym tasks'.

    python bench/fuzz_rewards.py                      # 1,000,000 completions (about 10 minutes on 2 cores)
    python bench/fuzz_rewards.py --n 2000 --json      # what the test suite runs

A policy in RL writes anything: endless digits, a thousand nested parentheses, `**` towers, half-closed
tags, control characters. A reward that raises stops the run; one that takes a second per call stalls
it. Every completion here goes through every reward of its task; the bench reports exceptions (the
target is none), calls over 10 ms (none) and the worst latency per reward, with the kind of completion
that caused it. A call over the limit is timed again: if the fastest of three repeats is under it, the
first was a pause of the process (the garbage collector, the scheduler) and is counted as a pause, not
as a slow reward; the worst latency is the reward's own. Completions are drawn from a seeded mix of
generators (`KINDS`), so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LIMIT_MS = 10.0
RETRIES = 3  # a call over the limit is timed again this many times; the fastest decides whether the reward is slow
RG_TASKS = ("rg:knights_knaves", "rg:basic_arithmetic", "rg:chain_sum", "rg:letter_counting", "rg:spell_backward")
TOKENS = ["<think>", "</think>", "<answer>", "</answer>", "\n", " ", "(", ")", "+", "-", "*", "/", "**", "//", "=",
          "0", "7", "42", "99", "1e308", "nan", "inf", ".", "True", "False", "Knight", "Knave", "is a"]  # fmt: skip


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.printable + "\u00e9\u4e2d\u200b\x00") for _ in range(n))


def _token_soup(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(TOKENS) for _ in range(n))


def _answer(body: str, rng: random.Random) -> str:
    return f"{_token_soup(rng, rng.randint(0, 20))}</think>\n<answer>{body}</answer>"


KINDS: dict[str, Callable[[random.Random], str]] = {
    "random text": lambda r: _random_text(r, r.randint(0, 3000)),
    "token soup": lambda r: _token_soup(r, r.randint(0, 2000)),
    "nested parentheses": lambda r: _answer("(" * (d := r.randint(1, 3000)) + "1+2" + ")" * d, r),
    "unbalanced parentheses": lambda r: _answer("(" * r.randint(1, 3000) + "3*4", r),
    "huge numbers": lambda r: _answer("9" * r.randint(1, 5000) + "*" + "9" * r.randint(1, 5000), r),
    "power towers": lambda r: _answer("**".join(["9"] * r.randint(2, 400)), r),
    "unary chains": lambda r: _answer("-" * r.randint(1, 5000) + "5", r),
    "division by zero": lambda r: _answer("1/(" + "-".join(["3"] * 2) + ")", r),
    "many answers": lambda r: "<answer>1</answer>\n" * r.randint(1, 1000),
    "long line": lambda r: _answer(" + ".join(str(r.randint(0, 99)) for _ in range(r.randint(1, 2000))), r),
    "control characters": lambda r: _answer("\x00\x1b[31m" + _random_text(r, 50), r),
    "plausible": lambda r: _answer(f"({r.randint(1, 99)} + {r.randint(1, 99)}) * {r.randint(1, 9)}", r),
}


def completions(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    kinds = list(KINDS)
    return [(kind := rng.choice(kinds), KINDS[kind](rng)) for _ in range(n)]


def tasks_and_examples(seed: int) -> list[tuple[Any, list[dict[str, Any]]]]:
    """Countdown and the reasoning-gym tasks, each with a few real examples to score against."""
    import itertools

    from r1lite.tasks.registry import load_task

    out = []
    for spec in ("countdown", *RG_TASKS):
        task = load_task(spec)
        out.append((task, list(itertools.islice(task.stream(seed), 8))))
    return out


def _timed(reward: Callable, text: str, example: dict[str, Any]) -> tuple[float, str | None]:
    """Milliseconds one call took, and what went wrong (a raise or a score that is not a number) or None."""
    t = time.perf_counter()
    try:
        score, _why = reward(text, example)
        error = None if isinstance(score, int | float) else f"TypeError: score {score!r} is not a number"
    except Exception as e:  # the bench counts what a reward must never do
        error = f"{type(e).__name__}: {str(e)[:120]}"
    return (time.perf_counter() - t) * 1000, error


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="completions (each through every reward of every task)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    args = p.parse_args(argv)
    from r1lite.tasks.rewards import get_reward, reward_names

    rows = completions(args.n, args.seed)
    report: dict[str, Any] = {"completions": args.n, "limit_ms": LIMIT_MS, "rewards": {}}
    start = time.perf_counter()
    for task, examples in tasks_and_examples(args.seed):
        for name in reward_names(task):
            reward = get_reward(name, task)
            worst, worst_kind, slow, pauses, errors, first_error = 0.0, "", 0, 0, 0, None
            for i, (kind, text) in enumerate(rows):
                example = examples[i % len(examples)]
                ms, error = _timed(reward, text, example)
                if error is not None:
                    errors += 1
                    first_error = first_error or f"{kind}: {error}"
                if ms > LIMIT_MS:  # slow, or a pause of the process (GC, the scheduler)? the same call again says
                    again = min(_timed(reward, text, example)[0] for _ in range(RETRIES))
                    slow += again > LIMIT_MS
                    pauses += again <= LIMIT_MS
                    ms = again
                if ms > worst:
                    worst, worst_kind = ms, kind
            report["rewards"][f"{task.name}/{name}"] = {
                "worst_ms": round(worst, 3),
                "worst_kind": worst_kind,
                "over_limit": slow,
                "pauses": pauses,
                "errors": errors,
                **({"first_error": first_error} if first_error else {}),
            }
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["calls"] = args.n * len(report["rewards"])
    report["errors"] = sum(r["errors"] for r in report["rewards"].values())
    report["over_limit"] = sum(r["over_limit"] for r in report["rewards"].values())
    report["pauses"] = sum(r["pauses"] for r in report["rewards"].values())
    print(json.dumps(report, indent=None if args.json else 1))
    return report


if __name__ == "__main__":
    sys.exit(1 if (lambda r: r["errors"] or r["over_limit"])(main()) else 0)
