"""The safe evaluator agrees with Python's eval where Countdown allows an expression, and refuses the rest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lite.tasks.arith import MAX_DEPTH, ExpressionError, evaluate


def _expr() -> st.SearchStrategy[str]:
    leaf = st.integers(0, 999).map(str) | st.sampled_from(["0.5", "3.", ".25", "12.75"])
    space = st.sampled_from(["", " ", "  "])

    def extend(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(children, space, st.sampled_from("+-*/"), space, children).map("".join)
        return binary | children.map(lambda c: f"({c})") | children.map(lambda c: f"-{c}")

    return st.recursive(leaf, extend, max_leaves=8)


@given(_expr())
@settings(max_examples=400, deadline=None)
def test_matches_python_eval_on_valid_expressions(text):
    try:
        expected = eval(text, {"__builtins__": {}}, {})  # reference on generated arithmetic only
    except ZeroDivisionError:
        with pytest.raises(ExpressionError):
            evaluate(text)
        return
    got = evaluate(text)
    assert got == expected and type(got) is type(expected)


@given(st.text(alphabet="0123456789+-*/(). ", max_size=30))
@settings(max_examples=600, deadline=None)
def test_never_more_permissive_than_eval(text):
    try:
        got = evaluate(text)
    except ExpressionError:
        return
    assert "**" not in text.replace(" ", "") and "//" not in text.replace(" ", "")
    assert eval(text, {"__builtins__": {}}, {}) == got


@pytest.mark.parametrize(
    "text",
    [
        "2**3",
        "8//2",
        "07 + 1",
        "00",
        "(1)(2)",
        "2(3)",
        "1 2",
        "1..2",
        "+3",
        "(1",
        "1)",
        "",
        "  ",
        "1/0",
        "3/(2-2)",
        "abc",
        "1e5",
        "__import__('os')",
    ],
)
def test_rejects(text):
    with pytest.raises(ExpressionError):
        evaluate(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("(1 + 2) / 3", 1.0),
        ("2*-3", -6),
        ("- - 4", 4),
        ("10-2-3", 5),
        ("8/2/2", 2.0),
        ("0", 0),
        (".5+1", 1.5),
        ("1 + -(2*3)", -5),
        (" 4 ", 4),
    ],
)
def test_worked_values(text, value):
    assert evaluate(text) == value


def test_hostile_input_fails_cleanly():
    with pytest.raises(ExpressionError):
        evaluate("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExpressionError):
        evaluate("-" * 5000 + "1")
    assert evaluate("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH) == 1


def test_huge_literals_and_values_are_refused_not_raised():
    """Found by bench/fuzz_rewards.py: a 4,541-digit literal made int() raise ValueError inside the reward."""
    from r1lite.tasks.countdown import check_equation

    for text in ("9" * 5000 + "*" + "9" * 5000, "1" + "0" * 150, "*".join(["99999999999"] * 20)):
        with pytest.raises(ExpressionError):
            evaluate(text)
        ok, why = check_equation(text, [44, 19, 35, 2], 98)
        assert not ok and why
    ok, why = check_equation("9" * 5000, [9], 9)
    assert (ok, why) == (False, "numbers differ from the given ones")
