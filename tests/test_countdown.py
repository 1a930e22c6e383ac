"""Solver, generator, traces and prompts of the Countdown task."""

from __future__ import annotations

import itertools
import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lite.arith import evaluate
from r1lite.tasks import countdown as cd


def _brute(vals: list[Fraction]) -> set[Fraction]:
    """Every value reachable by combining two numbers at a time (the textbook definition)."""
    if len(vals) == 1:
        return {vals[0]}
    out: set[Fraction] = set()
    for i, a in enumerate(vals):
        for j, b in enumerate(vals):
            if i != j:
                rest = [v for k, v in enumerate(vals) if k not in (i, j)]
                for c in [a + b, a - b, a * b] + ([a / b] if b else []):
                    out |= _brute([*rest, c])
    return out


def _uses_each_once(expr: str, nums: list[int]) -> bool:
    return sorted(int(n) for n in re.findall(r"\d+", expr)) == sorted(nums)


@given(st.lists(st.integers(0, 30), min_size=1, max_size=4), st.integers(-40, 120))
@settings(max_examples=300, deadline=None)
def test_solver_is_complete_and_sound(nums, target):
    expr = cd.solve(nums, target)
    reachable = Fraction(target) in _brute([Fraction(n) for n in nums])
    assert (expr is not None) == reachable
    if expr is not None:
        assert _uses_each_once(expr, nums)
        assert abs(evaluate(expr) - target) < 1e-9


@pytest.mark.parametrize(("nums", "target"), [([25, 3, 4, 7], 100), ([3, 5, 2], 16), ([1, 2, 3, 4], 24), ([6, 4], 1.5)])
def test_solver_worked(nums, target):
    expr = cd.solve(nums, target)
    assert expr is not None and abs(evaluate(expr) - target) < 1e-9


def test_solver_unsolvable():
    assert cd.solve([1, 1, 1], 100) is None


def test_generator_deterministic_distinct_and_solvable():
    a = cd.generate(300, seed=7)
    assert a == cd.generate(300, seed=7)
    assert a != cd.generate(300, seed=8)
    keys = {cd.example_key(r["nums"], r["target"]) for r in a}
    assert len(keys) == 300
    for r in a:
        assert len(r["nums"]) in (3, 4) and all(1 <= n <= 99 for n in r["nums"]) and 1 <= r["target"] <= 100
        assert _uses_each_once(r["solution"], r["nums"]) and evaluate(r["solution"]) == pytest.approx(r["target"])


def test_generator_respects_exclusions_and_ranges():
    first = cd.generate(50, seed=1, num_counts=(3,), num_range=(1, 9), target_range=(10, 20))
    keys = {cd.example_key(r["nums"], r["target"]) for r in first}
    more = cd.generate(50, seed=1, num_counts=(3,), num_range=(1, 9), target_range=(10, 20), exclude=keys)
    assert not keys & {cd.example_key(r["nums"], r["target"]) for r in more}
    assert all(10 <= r["target"] <= 20 and len(r["nums"]) == 3 for r in first + more)


def test_generator_reports_impossible_requests():
    with pytest.raises(ValueError, match="widen"):
        cd.generate(5, seed=0, num_counts=(2,), num_range=(1, 1), target_range=(50, 60))


_STEP = re.compile(r"Try (-?\d+(?:/\d+)?) ([-+*/]) (-?\d+(?:/\d+)?) = (-?\d+(?:/\d+)?)")


@given(st.integers(0, 10_000), st.integers(0, 4))
@settings(max_examples=60, deadline=None)
def test_traces_are_consistent(seed, dead_ends):
    ex = cd.generate(1, seed=seed)[0]
    trace = cd.make_trace(ex["nums"], ex["target"], random.Random(seed), max_dead_ends=dead_ends)
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    steps = _STEP.findall(trace)
    assert steps
    for a, op, b, v in steps:
        assert ops[op](Fraction(a), Fraction(b)) == Fraction(v)
    assert trace.count("Back up.") <= dead_ends
    assert cd.tinyzero_reward(trace, ex["nums"], ex["target"]) == (1.0, "correct")
    assert cd.think_format_reward(trace)[0] == 1.0
    assert cd.shows_search(trace) or len(steps) <= 2


def test_trace_dead_ends_are_real():
    lines = cd.make_trace([25, 3, 4, 7], 100, random.Random(3), max_dead_ends=4).splitlines()
    checked = 0
    for line, nxt in itertools.pairwise(lines):
        m = re.match(r"Try .* = .*, leaving \[(.*)\]\.$", line)
        if m and "Back up" in nxt:
            checked += 1
            assert Fraction(100) not in _brute([Fraction(x) for x in m.group(1).split(", ")])
    assert checked >= 1


def test_base_prompt_is_tinyzero_verbatim():
    expected = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
        "assistant first thinks about the reasoning process in the mind and then provides the user with the answer.\n"
        "User: Using the numbers [1, 2, 3], create an equation that equals 6. You can use basic arithmetic operations "
        "(+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. And return the "
        "final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\nAssistant: Let me solve "
        "this step by step.\n<think>"
    )
    assert cd.base_prompt([1, 2, 3], 6) == expected


def test_prompt_formats_end_in_think():
    assert cd.qwen_instruct_prompt([1, 2], 3).startswith("<|im_start|>system\n")
    assert cd.qwen_instruct_prompt([1, 2], 3).endswith(
        "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
    )
    assert cd.chat_messages([1, 2], 3)[1]["content"].startswith("Using the numbers [1, 2], create")
    with pytest.raises(ValueError, match="chat template"):
        cd.render_prompt([1, 2], 3, "chat", tokenizer=None)
    with pytest.raises(ValueError, match="unknown prompt format"):
        cd.render_prompt([1, 2], 3, "nope")


def test_shows_search():
    assert cd.shows_search("Try 1 + 2 = 3. Not 5. Try 2 * 3 = 6. Check: yes</think>")
    assert not cd.shows_search("The answer is 6.</think>")


@pytest.mark.parametrize(
    ("text", "example"),
    [
        ("3 5 7 -> 22", {"nums": [3, 5, 7], "target": 22}),
        ("[3, 5, 7] = 22", {"nums": [3, 5, 7], "target": 22}),
        ("3,5,7 → 22", {"nums": [3, 5, 7], "target": 22}),
        ("Using the numbers [3, 5, 7], make 22.", {"nums": [3, 5, 7], "target": 22}),  # question() reads back
        ("what is the meaning of life?", None),  # not a Countdown problem: `r1lite try` answers it unscored
    ],
)
def test_parse_reads_typed_problems(text, example):
    assert cd.Countdown().parse(text) == example


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3 x 7 -> 22", "is not a Countdown problem; write one as numbers, an arrow and the target"),
        ("3 5 -> many", "is not a Countdown problem"),
        ("3 -> 22", "Countdown takes 2 to 6 numbers"),
        ("1 2 3 4 5 6 7 -> 22", "Countdown takes 2 to 6 numbers (the solver is exhaustive); got 7"),
        ("2 + 2 = 4", "is not a Countdown problem"),
    ],
)
def test_parse_rejects_malformed_problems(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cd.Countdown().parse(text)
