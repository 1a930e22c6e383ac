"""Rewards against worked cases, including TinyZero's last-line quirks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lite.errors import R1liteError
from r1lite.tasks import last_answer
from r1lite.tasks.countdown import equation_reward, tinyzero_reward
from r1lite.tasks.rewards import get_reward, reward_names, think_format, trl_reward_funcs

NUMS, TARGET = [44, 19, 35], 98  # 44 + 19 + 35 = 98


@pytest.mark.parametrize(
    ("completion", "reward", "reason"),
    [
        ("ok</think>\n<answer>44 + 19 + 35</answer>", 1.0, "correct"),
        ("<answer>35 + 44 + 19</answer>", 1.0, "correct"),
        ("ok</think>\n<answer> (44 + 19) + 35 </answer>", 1.0, "correct"),
        # trailing newline: the last line is empty, so TinyZero finds no answer
        ("ok</think>\n<answer>44 + 19 + 35</answer>\n", 0.0, "no <answer>"),
        # answer on an earlier line only
        ("<answer>44 + 19 + 35</answer>\nso that is it", 0.0, "no <answer>"),
        # the last match on the last line counts
        ("<answer>1 + 2</answer> <answer>44 + 19 + 35</answer>", 1.0, "correct"),
        ("<answer>44 + 19 + 35</answer> <answer>1 + 2</answer>", 0.1, "numbers differ"),
        ("<answer>44 + 19 - 35</answer>", 0.1, "evaluates to 28"),
        ("<answer>44 + 19 + 35 + 1</answer>", 0.1, "numbers differ"),
        ("<answer>44 + 19</answer>", 0.1, "numbers differ"),
        ("<answer>44 + 19 + 35 = 98</answer>", 0.1, "numbers differ"),
        ("<answer>44 + 19 + 35 x</answer>", 0.1, "characters"),
        ("<answer>44 ** 19 + 35</answer>", 0.1, "not a valid expression"),
        ("<answer>44 // 19 + 35</answer>", 0.1, "not a valid expression"),
        ("<answer>44 + 19 + 035</answer>", 0.1, "not a valid expression"),
        ("<answer>44 + 19 / (35 - 35)</answer>", 0.1, "numbers differ"),
        ("<answer></answer>", 0.1, "numbers differ"),
        ("no tags at all", 0.0, "no <answer>"),
        ("<answer>44 + 19 + 35", 0.0, "no <answer>"),
    ],
)
def test_tinyzero_worked_cases(completion, reward, reason):
    got, why = tinyzero_reward(completion, NUMS, TARGET)
    assert got == reward
    assert why.startswith(reason)


def test_tinyzero_division_by_zero_is_format_score():
    assert tinyzero_reward("<answer>(1 - 1) / 2 + 3 / (2 - 2)</answer>", [1, 1, 2, 3, 2, 2], 0) == (
        0.1,
        "not a valid expression: division by zero",
    )


def test_tinyzero_fractional_intermediate_is_exact_enough():
    assert tinyzero_reward("<answer>(1 + 2 / 3) * 3</answer>", [1, 2, 3, 3], 5)[0] == 1.0


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("I add them.</think>\n<answer>44 + 19 + 35</answer>", 1.0),
        ("<think>I add them.</think>\n<answer>1</answer>", 1.0),  # a restated opening tag is allowed
        ("I add them.</think>\n<answer>44 + 19 + 35</answer>\n", 0.0),  # text after the answer
        ("I add them.</think><answer>44</answer>", 0.0),  # no newline between
        ("I add them.</think>\n\n<answer>44</answer>", 0.0),
        ("a</think>\nb</think>\n<answer>44</answer>", 0.0),  # two closings
        ("a</think>\n<answer>1</answer><answer>2</answer>", 0.0),  # two answers
        ("a\n<answer>44</answer>", 0.0),  # think never closed
        ("a</think>\n<answer>44", 0.0),
    ],
)
def test_think_format(completion, reward):
    assert think_format(completion)[0] == reward


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("<answer>44 + 19 + 35</answer>\n", 1.0),  # anywhere, unlike TinyZero's last-line rule
        ("<answer>44 + 19 + 35</answer>\nmore text", 1.0),
        ("<answer>\n44 + 19 + 35\n</answer>", 1.0),
        ("<answer>44 + 19 + 35</answer> then <answer>1</answer>", 0.0),
        ("<answer>44 - 19 + 35</answer>", 0.0),
        ("nothing", 0.0),
    ],
)
def test_equation_reward(completion, reward):
    assert equation_reward(completion, NUMS, TARGET)[0] == reward


@given(st.lists(st.sampled_from(["<answer>", "</answer>", "a", "1", "\n", " ", "<", ">"]), max_size=40).map("".join))
@settings(max_examples=500, deadline=None)
def test_last_answer_matches_regex(text):
    import re

    matches = list(re.finditer(r"<answer>(.*?)</answer>", text, re.S))
    assert last_answer(text) == (matches[-1].group(1) if matches else None)


@given(st.text(max_size=300), st.lists(st.integers(0, 100), min_size=3, max_size=4), st.integers(0, 100))
@settings(max_examples=300, deadline=None)
def test_rewards_total_on_any_text(text, nums, target):
    for name in reward_names():
        reward, reason = get_reward(name)(text, {"nums": nums, "target": target})
        assert reward in (0.0, 0.1, 1.0) and isinstance(reason, str)


def test_registry_typo_names_closest():
    with pytest.raises(R1liteError, match="did you mean 'think_format'"):
        get_reward("think_fromat")


def test_trl_wrappers_score_batches_and_chat_messages():
    tiny, fmt = trl_reward_funcs(["countdown_tinyzero", "think_format"])
    completions = ["x</think>\n<answer>44 + 19 + 35</answer>", [{"role": "assistant", "content": "<answer>1</answer>"}]]
    assert tiny.__name__ == "countdown_tinyzero"
    assert tiny(completions, nums=[NUMS, NUMS], target=[TARGET, TARGET]) == [1.0, 0.1]
    assert fmt(completions, nums=[NUMS, NUMS], target=[TARGET, TARGET]) == [1.0, 0.0]
