"""Solver, generator, traces and prompts of the Countdown task."""

from __future__ import annotations

import itertools
import random
import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lite.tasks import ExampleError
from r1lite.tasks import countdown as cd
from r1lite.tasks.arith import evaluate
from r1lite.tasks.rewards import shows_search, think_format


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
    from r1lite.errors import DataError

    with pytest.raises(DataError, match="widen the number or target range"):  # one line naming the settings
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
    assert think_format(trace)[0] == 1.0
    assert shows_search(trace) or len(steps) <= 2


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
    assert cd.Countdown().render_prompt({"nums": [1, 2, 3], "target": 6}, "base") == expected


def _prompts_the_stages_render(fmt: str, tokenizer) -> tuple[list, dict[str, list[str]]]:
    """(train and test problems, the prompts GRPO, SFT and eval build from them) for `data.prompt_format=fmt`."""
    from types import SimpleNamespace

    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data, grpo, sft
    from r1lite.stages import evaluate as evaluate_stage

    sets = [f"data.prompt_format={fmt}", "data.dir=data/prompts", "data.train_size=3", "data.test_size=3"]
    recipe = load_recipe("countdown", "cpu", [*sets, "sft.examples=3", "eval.examples=3"])
    data.run(recipe.data)
    seen = {}

    def generate(model, tokenizer, prompts, *args, **kwargs):  # the eval's prompts, answered with nothing
        seen["eval"] = prompts
        return [[("", 0)] for _ in prompts]

    examples = data.load_split(recipe.data, "train"), data.load_split(recipe.data, "test")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_stage, "generate", generate)
        model = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=SimpleNamespace(type="cpu"))]))
        evaluate_stage.evaluate(model, tokenizer, examples[1], recipe)
    seen["grpo"] = [row["prompt"] for row in grpo.build_dataset(recipe, tokenizer)]
    seen["sft"] = [row["prompt"] for row in sft.build_dataset(recipe, tokenizer)]
    return examples, seen


@pytest.fixture(scope="module")
def chat_tokenizer():
    from r1lite.train.tiny import build_tokenizer

    return build_tokenizer()  # a ChatML template, as the offline model's


@pytest.mark.parametrize("fmt", ["base", "qwen-instruct", "chat", "compact"])
def test_the_prompts_every_stage_renders_end_in_think_and_ask_the_problem(fmt, chat_tokenizer):
    """What GRPO trains on, SFT imitates after and eval scores: one rendering (the task's), TinyZero's text."""
    (train, test), seen = _prompts_the_stages_render(fmt, chat_tokenizer)
    task = cd.Countdown()
    for stage, problems in (("grpo", train), ("sft", train), ("eval", test)):
        assert seen[stage] == [task.render_prompt(ex, fmt, chat_tokenizer) for ex in problems], stage
        for ex, prompt in zip(problems, seen[stage], strict=True):
            assert prompt.endswith("<think>"), (stage, prompt)  # the completion starts inside the think block
            ask = (
                f"Make {ex['target']} from {ex['nums']} with + - * /, each number once. Answer in <answer></answer>."
                if fmt == "compact"
                else f"Using the numbers {ex['nums']}, create an equation that equals {ex['target']}. "
            )
            assert ask in prompt, (stage, prompt)
    ex = train[0]
    user = (
        f"Using the numbers {ex['nums']}, create an equation that equals {ex['target']}. You can use basic arithmetic "
        "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> tags. "
        "And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
    )
    system = (
        "You are a helpful assistant. You first thinks about the reasoning process in the mind and then provides "
        "the user with the answer."
    )
    prompt = seen["grpo"][0]
    if fmt == "base":
        assert prompt == (  # TinyZero's text (test_base_prompt_is_tinyzero_verbatim)
            "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
            "assistant first thinks about the reasoning process in the mind and then provides the user with the "
            f"answer.\nUser: {user}\nAssistant: Let me solve this step by step.\n<think>"
        )
    elif fmt == "qwen-instruct":  # TinyZero's ChatML written out by hand
        assert prompt == (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n {user}<|im_end|>\n"
            "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
        )
    elif fmt == "chat":  # the same turns through the model's own template
        assert prompt == (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
        )
    else:  # an empty system turn keeps the template's default system prompt out
        assert prompt == (
            f"<|im_start|>system\n<|im_end|>\n<|im_start|>user\nMake {ex['target']} from {ex['nums']} with + - * /, "
            "each number once. Answer in "
            "<answer></answer>.<|im_end|>\n<|im_start|>assistant\n<think>"
        )


def test_prompt_formats_that_cannot_be_rendered_are_refused():
    from r1lite.tasks import TaskError

    task, ex = cd.Countdown(), {"nums": [1, 2], "target": 3}
    with pytest.raises(TaskError, match="chat template"):
        task.render_prompt(ex, "chat", tokenizer=None)
    with pytest.raises(TaskError, match="unknown prompt format"):
        task.render_prompt(ex, "nope")
    assert task.render_prompt(ex, "compact") == (  # no chat template: the question, then the think block
        "Make 3 from [1, 2] with + - * /, each number once. Answer in <answer></answer>.\n<think>"
    )


def test_shows_search():
    assert shows_search("Try 1 + 2 = 3. Not 5. Try 2 * 3 = 6. Check: yes</think>")
    assert not shows_search("The answer is 6.</think>")


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
    with pytest.raises(ExampleError, match=re.escape(message)):  # a ValueError too, as the Task interface says
        cd.Countdown().parse(text)
