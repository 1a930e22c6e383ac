"""bench/independent_eval.py's scorer and problem generator (no model): pure Python, fast."""

from __future__ import annotations

import ast
import importlib.util
import sys
from fractions import Fraction
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "bench" / "independent_eval.py"
spec = importlib.util.spec_from_file_location("bench_independent_eval", PATH)
ie = importlib.util.module_from_spec(spec)
sys.modules["bench_independent_eval"] = ie
spec.loader.exec_module(ie)


def answer(expr: str) -> str:
    return f"<think>\nsome work\n</think>\n<answer>{expr}</answer>"


def test_the_script_imports_nothing_from_r1lite():
    tree = ast.parse(PATH.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [m for m in names if m.split(".")[0] == "r1lite"]


@pytest.mark.parametrize(
    "expr", ["55 + (96 - 79)", " 96 - 79 + 55 ", "(96-79)+55", "-79 + 55 + 96", "((55 + (96 - 79)))"]
)
def test_right_answers(expr):
    assert ie.score(answer(expr), [79, 55, 96], 72) == (True, "correct")


@pytest.mark.parametrize("expr", ["55 + 96 - 79 + 0", "96 - 79 - 55", "79 + 55 - 96"])
def test_wrong_answers(expr):
    ok, why = ie.score(answer(expr), [79, 55, 96], 72)
    assert not ok and why


def test_only_the_last_answer_counts():
    right, wrong = answer("55 + (96 - 79)"), answer("79 + 55 - 96")
    assert ie.score(wrong + right, [79, 55, 96], 72)[0]
    assert not ie.score(right + wrong, [79, 55, 96], 72)[0]


@pytest.mark.parametrize(
    "text",
    [
        "no tags at all: 55 + (96 - 79)",
        "<answer>55 + (96 - 79)",  # never closed
        answer(""),
        answer("55 +"),
        answer("(55 + 96"),
        answer("55 (96 - 79)"),  # a call in Python's grammar
        answer("55 + 96 - 79 = 72"),
        answer("__import__('os').system('true')"),
        answer("2 ** 6 + 8"),
        answer("96 // 79"),
        answer("1.5 * 48"),
        answer("72\n"),
        answer("1" * 300),
        answer("(" * 150 + "72" + ")" * 150),
    ],
)
def test_malformed_answers_are_wrong_and_never_raise(text):
    ok, why = ie.score(text, [79, 55, 96], 72)
    assert not ok and why


def test_each_number_at_most_once_and_only_given_numbers():
    assert not ie.score(answer("5 + 5 + 5"), [3, 5, 7], 15)[0]  # 5 used three times
    assert not ie.score(answer("3 * 5"), [3, 7, 8], 15)[0]  # 5 is not given
    assert not ie.score(answer("05 + 10"), [5, 10, 2], 15)[0]  # leading zero: malformed
    assert ie.score(answer("5 + 5"), [5, 5, 3], 10)[0]  # given twice, used twice
    assert ie.score(answer("3 * 5"), [3, 5, 7], 15) == (True, "correct (not every number used)")


def test_division_is_exact():
    assert 7 / 3 * 27 != 63  # in floats
    assert ie.score(answer("7 / 3 * 27"), [7, 3, 27], 63) == (True, "correct")
    assert not ie.score(answer("7 / 2 + 3"), [7, 2, 3], 6)[0]  # 6.5
    assert ie.score(answer("(7 / 2) * 4"), [7, 2, 4], 14)[0]
    assert ie.score(answer("5 / (3 - 3)"), [5, 3, 3], 0) == (False, "division by zero")


def test_reachable_values_are_every_expression_of_all_numbers():
    reach = ie.reachable([2, 3, 4])
    assert {24, 20, 18, 14, 11, 10, 9, 6, 5, 4, 3, 2, 1, -5} <= set(reach) and Fraction(3, 8) in reach
    assert not {0, 7, 8, 12, 25} & set(reach)  # 3 * 4 = 12 and 2 * 4 = 8, but the third number must be used too
    assert ie.reachable([1, 1, 1]).keys() >= {3, 1, 0, -1} and max(ie.reachable([1, 1, 1])) == 3
    for value, expr in reach.items():
        assert ie.score(answer(expr), [2, 3, 4], value)[0] if value.denominator == 1 else True


def test_problems_are_reachable_distinct_and_seeded():
    problems = ie.generate(64, seed=2026)
    assert problems == ie.generate(64, seed=2026) and problems != ie.generate(64, seed=1)
    keys = {ie.problem_key(p["nums"], p["target"]) for p in problems}
    assert len(keys) == 64
    for p in problems:
        assert len(set(p["nums"])) == 3 and all(1 <= n <= 99 for n in p["nums"]) and 1 <= p["target"] <= 100
        assert Fraction(p["target"]) in ie.reachable(p["nums"])
        assert ie.score(answer(p["witness"]), p["nums"], p["target"]) == (True, "correct")


def test_excluded_problems_never_appear():
    first = ie.generate(8, seed=2026)
    exclude = {ie.problem_key(p["nums"], p["target"]) for p in first[:4]}
    again = ie.generate(8, seed=2026, exclude=exclude)
    assert not exclude & {ie.problem_key(p["nums"], p["target"]) for p in again}


def test_split_pair_allows_dashes_in_names():
    assert ie.split_pair("real-control", ["real", "control"]) == ("real", "control")
    assert ie.split_pair("grpo-s1-sft", ["grpo-s1", "sft"]) == ("grpo-s1", "sft")
    assert ie.split_pair("real-nope", ["real", "control"]) is None


def test_compact_prompt_without_a_chat_template():
    want = "Make 72 from [79, 55, 96] with + - * /, each number once. Answer in <answer></answer>.\n<think>"
    assert ie.render([79, 55, 96], 72, "compact") == want
