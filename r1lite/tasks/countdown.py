"""The Countdown task: numbers, a target, and + - * / to reach it using each number once.

    >>> ex = generate(1, seed=0)[0]            # {"nums": [...], "target": ..., "solution": "..."}
    >>> solve([25, 3, 4, 7], 100)              # '25 * 4' style expression, or None
    >>> base_prompt([1, 2, 3], 6)              # TinyZero's base-model prompt, ending in "<think>"
    >>> tinyzero_reward("...</think>\\n<answer>1 + 2 + 3</answer>", [1, 2, 3], 6)   # (1.0, "correct")

Everything the task needs lives here: the solver (exact fractions, exhaustive), the seeded
generator, Stream-of-Search style reasoning traces for SFT, the prompt templates and the rewards.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

from r1lite.arith import ExpressionError, evaluate
from r1lite.rewards import register

Value = int | Fraction
Tree = Any  # a leaf Value, or (op, left Tree, right Tree)

# ----------------------------------------------------------------------------------------------
# Solver: subset dynamic programming over exact values, then a top-level inversion step
# ----------------------------------------------------------------------------------------------


def _norm(x: Value) -> Value:
    return x.numerator if isinstance(x, Fraction) and x.denominator == 1 else x


def _div(a: Value, b: Value) -> Value:
    if isinstance(a, int) and isinstance(b, int):
        return a // b if a % b == 0 else Fraction(a, b)
    return _norm(Fraction(a) / b)


def _combine(a: Value, b: Value) -> Iterator[tuple[str, Value, bool]]:
    """Every (op, value, swapped) from one pair; `swapped` means the expression is `b op a`."""
    yield "+", _norm(a + b), False
    yield "*", _norm(a * b), False
    yield "-", _norm(a - b), False
    yield "-", _norm(b - a), True
    if b != 0:
        yield "/", _div(a, b), False
    if a != 0:
        yield "/", _div(b, a), True


def _reach(values: Sequence[Value], skip_full: bool) -> list[dict[Value, Tree]]:
    """reach[mask] maps every value the numbers in `mask` can make to one expression tree."""
    n = len(values)
    full = (1 << n) - 1
    reach: list[dict[Value, Tree]] = [{} for _ in range(1 << n)]
    for i, v in enumerate(values):
        reach[1 << i][_norm(v)] = _norm(v)
    for mask in sorted(range(1, full + 1), key=int.bit_count):
        if mask.bit_count() < 2 or (skip_full and mask == full):
            continue
        out = reach[mask]
        sub = (mask - 1) & mask
        while sub:
            rest = mask ^ sub
            if sub < rest:  # each unordered split once
                for a, ta in reach[sub].items():
                    for b, tb in reach[rest].items():
                        for op, v, swapped in _combine(a, b):
                            if v not in out:
                                out[v] = (op, tb, ta) if swapped else (op, ta, tb)
            sub = (sub - 1) & mask
    return reach


def _top(values: Sequence[Value], reach: list[dict[Value, Tree]], target: Value) -> Tree | None:
    """Last step of the search: find `a op b == target` over every split of all the numbers."""
    n = len(values)
    if n == 1:
        return _norm(values[0]) if values[0] == target else None
    full = (1 << n) - 1
    t = target
    for left in range(1, full):
        ra, rb = reach[left], reach[full ^ left]
        # iterate the smaller side and look the other operand up
        if len(rb) <= len(ra):
            for b, tb in rb.items():
                wanted = [("+", t - b), ("-", t + b)]
                if b != 0:
                    wanted += [("*", _div(t, b)), ("/", _norm(t * b))]
                for op, a in wanted:
                    if a in ra:
                        return (op, ra[a], tb)
        else:
            for a, ta in ra.items():
                wanted = [("+", t - a), ("-", a - t)]
                if a != 0:
                    wanted.append(("*", _div(t, a)))
                if t != 0:
                    wanted.append(("/", _div(a, t)))
                for op, b in wanted:
                    if b in rb and (op != "/" or b != 0):
                        return (op, ta, rb[b])
    return None


def _solve_tree(values: Sequence[Value], target: Value) -> Tree | None:
    """Expression tree using every value exactly once that equals `target`, or None."""
    if not values:
        return None
    return _top(values, _reach(values, skip_full=True), target)


def show(tree: Tree) -> str:
    """Render a tree with parentheses around every compound operand: `(3 + 5) * 2`."""
    if not isinstance(tree, tuple):
        return str(tree)
    op, left, right = tree
    parts = [show(x) if not isinstance(x, tuple) else f"({show(x)})" for x in (left, right)]
    return f"{parts[0]} {op} {parts[1]}"


def solve(nums: Sequence[int], target: int) -> str | None:
    """One expression using each number exactly once that equals `target`, or None."""
    tree = _solve_tree(list(nums), target)
    return None if tree is None else show(tree)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def example_key(nums: Sequence[int], target: int) -> tuple[tuple[int, ...], int]:
    """Identity of a problem for de-duplication and split disjointness."""
    return tuple(sorted(int(n) for n in nums)), int(target)


def generate(
    n: int,
    seed: int,
    num_counts: Sequence[int] = (3, 4),
    num_range: tuple[int, int] = (1, 99),
    target_range: tuple[int, int] = (1, 100),
    exclude: set | None = None,
    max_tries: int | None = None,
) -> list[dict[str, Any]]:
    """`n` distinct solvable problems.

    Numbers are drawn uniformly; the target is drawn uniformly among the targets in range that
    those numbers can reach (numbers that reach none are redrawn). Only ~15 % of uniformly drawn
    4-number problems with targets <= 100 are solvable, so drawing the target from the reachable
    ones is ~7x cheaper than rejection and gives the same distribution of target given numbers.
    """
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict[str, Any]] = []
    targets = list(range(target_range[0], target_range[1] + 1))
    tries, limit = 0, max_tries or 50 * n + 1_000
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(
                f"found only {len(out)} of {n} distinct solvable problems in {limit} draws; "
                "widen the number or target range, or ask for fewer examples"
            )
        nums = [rng.randint(*num_range) for _ in range(rng.choice(list(num_counts)))]
        reach = _reach(nums, skip_full=True)
        for target in rng.sample(targets, len(targets)):
            key = example_key(nums, target)
            if key in seen:
                continue
            tree = _top(nums, reach, target)
            if tree is not None:
                seen.add(key)
                out.append({"nums": nums, "target": target, "solution": show(tree)})
                break
    return out


# ----------------------------------------------------------------------------------------------
# Reasoning traces (Stream-of-Search style) for the SFT warm-up
# ----------------------------------------------------------------------------------------------


def _steps(tree: Tree) -> list[tuple[Value, str, Value, Value]]:
    """Post-order list of (a, op, b, result) steps that build `tree`."""
    if not isinstance(tree, tuple):
        return []
    op, left, right = tree
    steps = _steps(left) + _steps(right)
    a, b = _value(left), _value(right)
    return [*steps, (a, op, b, _value(tree))]


def _value(tree: Tree) -> Value:
    if not isinstance(tree, tuple):
        return tree
    op, left, right = tree
    a, b = _value(left), _value(right)
    return {"+": lambda: _norm(a + b), "-": lambda: _norm(a - b), "*": lambda: _norm(a * b), "/": lambda: _div(a, b)}[
        op
    ]()


def _remove(values: list[Value], *taken: Value) -> list[Value]:
    rest = list(values)
    for v in taken:
        rest.remove(v)
    return rest


def _fmt(values: Sequence[Value]) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def _dead_ends(nums: list[int], target: int, rng: random.Random) -> list[tuple[Value, str, Value, Value]]:
    """First moves after which the remaining numbers provably cannot reach the target."""
    moves = []
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            for op, v, swapped in _combine(nums[i], nums[j]):
                a, b = (nums[j], nums[i]) if swapped else (nums[i], nums[j])
                if isinstance(v, Fraction) or v < 0:
                    continue  # keep the explored detours readable
                rest = [*_remove(nums, nums[i], nums[j]), v]
                if _solve_tree(rest, target) is None:
                    moves.append((a, op, b, v))
    rng.shuffle(moves)
    return moves


def make_trace(
    nums: Sequence[int], target: int, rng: random.Random, max_dead_ends: int = 2, style: str = "search"
) -> str:
    """A `<think>` body that tries moves, verifies them, backs up, then finds and checks an answer.

    Every number in it is computed exactly, so the trace never teaches wrong arithmetic. The text
    continues a prompt that ends in `<think>` and ends with `</think>\\n<answer>EXPR</answer>`.
    `style="short"` keeps only the solution's steps and a one-line check (~40% of the tokens), for
    warm-ups that must be cheap (the CPU demo).
    """
    nums = [int(n) for n in nums]
    tree = _solve_tree(nums, target)
    if tree is None:
        raise ValueError(f"{nums} cannot make {target}")
    if style == "short":
        steps = [f"Try {a} {op} {b} = {v}." for a, op, b, v in _steps(tree)]
        expr = show(tree)
        return "\n" + "\n".join([*steps, f"Check: {expr} = {target}."]) + f"\n</think>\n<answer>{expr}</answer>"
    lines = [f"\nWe need {target} from {_fmt(nums)}, using each number once."]
    for a, op, b, v in _dead_ends(nums, target, rng)[: rng.randint(0, max_dead_ends)]:
        rest = [*_remove(nums, a, b), v]
        lines.append(f"Try {a} {op} {b} = {v}, leaving {_fmt(rest)}.")
        if len(rest) == 1:
            lines.append(f"{v} is not {target}. Back up.")
        else:
            lines.append(f"No way to combine {_fmt(rest)} into {target}. Back up.")
    values: list[Value] = list(nums)
    for a, op, b, v in _steps(tree):
        values = [*_remove(values, a, b), v]
        left = f", leaving {_fmt(values)}" if len(values) > 1 else ""
        lines.append(f"Try {a} {op} {b} = {v}{left}.")
    expr = show(tree)
    lines.append(f"That gives {target}. Check: {expr} = {target}, and each of {_fmt(nums)} is used once.")
    return "\n".join(lines) + f"\n</think>\n<answer>{expr}</answer>"


# ----------------------------------------------------------------------------------------------
# Prompts (TinyZero's templates, verbatim)
# ----------------------------------------------------------------------------------------------

_INSTRUCTION = (
    "Using the numbers {nums}, create an equation that equals {target}. You can use basic arithmetic "
    "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
    "tags. And return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)
_SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind and then "
    "provides the user with the answer."
)
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
PROMPT_FORMATS = ("base", "qwen-instruct", "chat", "compact")
# not TinyZero's: a one-line question for runs where prompt tokens are the cost (the 2-core CPU demo)
_COMPACT = "Make {target} from {nums} with + - * /, each number once. Answer in <answer></answer>."


def base_prompt(nums: Sequence[int], target: int) -> str:
    """TinyZero's template for base models."""
    return (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user "
        "with the answer.\nUser: "
        + _INSTRUCTION.format(nums=list(nums), target=target)
        + "\nAssistant: "
        + ASSISTANT_PREFIX
    )


def qwen_instruct_prompt(nums: Sequence[int], target: int) -> str:
    """TinyZero's template for Qwen instruct models (ChatML written out by hand)."""
    return (
        f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n "
        + _INSTRUCTION.format(nums=list(nums), target=target)
        + "<|im_end|>\n<|im_start|>assistant\n"
        + ASSISTANT_PREFIX
    )


def chat_messages(nums: Sequence[int], target: int) -> list[dict[str, str]]:
    """The same question as chat messages, for models that bring their own chat template."""
    return [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": _INSTRUCTION.format(nums=list(nums), target=target)},
    ]


def render_prompt(nums: Sequence[int], target: int, fmt: str, tokenizer: Any = None) -> str:
    """Prompt text in format `fmt`; every format ends in `<think>` so completions are comparable."""
    if fmt == "base":
        return base_prompt(nums, target)
    if fmt == "qwen-instruct":
        return qwen_instruct_prompt(nums, target)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt format 'chat' needs a tokenizer with a chat template; use 'base'")
        text = tokenizer.apply_chat_template(chat_messages(nums, target), tokenize=False, add_generation_prompt=True)
        return text + ASSISTANT_PREFIX
    if fmt == "compact":
        question = _COMPACT.format(nums=list(nums), target=target)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return f"{question}\n<think>"
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "<think>"
    raise ValueError(f"unknown prompt format {fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")


# ----------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------

_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")
_NUMBER = re.compile(r"\d+")


def last_answer(text: str) -> str | None:
    """Content of the last non-overlapping `<answer>(.*?)</answer>` match, like `re.finditer` gives.

    A find() loop instead of the regex: the regex is quadratic on text with many unclosed tags.
    """
    pos, found = 0, None
    while True:
        start = text.find("<answer>", pos)
        if start < 0:
            return found
        end = text.find("</answer>", start + 8)
        if end < 0:
            return found
        found, pos = text[start + 8 : end], end + 9


def check_equation(equation: str, nums: Sequence[int], target: float) -> tuple[bool, str]:
    """(correct, reason) for an answer string, following TinyZero's order of checks."""
    # Runs of whitespace never change the outcome; collapsing them keeps hostile input fast.
    equation = " ".join(equation.split())
    if sorted(int(n) for n in _NUMBER.findall(equation)) != sorted(int(n) for n in nums):
        return False, "numbers differ from the given ones"
    if not _ALLOWED.match(equation):
        return False, "characters outside digits, + - * / ( ) . and spaces"
    try:
        value = evaluate(equation)
    except (ExpressionError, OverflowError) as e:
        return False, f"not a valid expression: {e}"
    if abs(value - target) < 1e-5:
        return True, "correct"
    return False, f"evaluates to {value:g}, not {target}"


@register("countdown_tinyzero")
def tinyzero_reward(completion: str, nums: Sequence[int], target: int) -> tuple[float, str]:
    """TinyZero's score: 1.0 correct, 0.1 an answer in the right place that is wrong, 0.0 none.

    Only the last line of the completion is searched, exactly as TinyZero does, so a trailing
    newline after `</answer>` scores 0.0.
    """
    answer = last_answer(completion.split("\n")[-1])
    if answer is None:
        return 0.0, "no <answer>...</answer> on the last line"
    ok, reason = check_equation(answer.strip(), nums, target)
    return (1.0 if ok else 0.1), reason


@register("think_format")
def think_format_reward(completion: str, nums: Sequence[int] = (), target: int = 0) -> tuple[float, str]:
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


@register("countdown_equation")
def equation_reward(completion: str, nums: Sequence[int], target: int) -> tuple[float, str]:
    """1.0 when the last `<answer>` anywhere in the text is a correct equation, else 0.0."""
    answer = last_answer(completion)
    if answer is None:
        return 0.0, "no <answer>...</answer>"
    ok, reason = check_equation(answer.strip(), nums, target)
    return (1.0 if ok else 0.0), reason


# ----------------------------------------------------------------------------------------------
# Search behaviour (for eval): does a completion try more than one thing, or check itself?
# ----------------------------------------------------------------------------------------------

_SEARCH = re.compile(
    r"\b(try|let'?s try|another|instead|back up|backtrack|doesn'?t work|does not work|not \d+|"
    r"too (big|large|small|high|low)|check|verify|alternatively|wait)\b",
    re.I,
)


def shows_search(completion: str) -> bool:
    """True when the reasoning tries alternatives or verifies a result (two or more such cues)."""
    think = completion.split("</think>", 1)[0]
    return len(_SEARCH.findall(think)) >= 2


_SELF_CHECK = re.compile(r"\b(check|checking|verify|verified|double[- ]check|confirm|wait)\b", re.I)


def self_checks(completion: str) -> bool:
    """True when the reasoning checks its own result ("Check: ...", "let me verify", "wait")."""
    return bool(_SELF_CHECK.search(completion.split("</think>", 1)[0]))


# Behaviour as rewards, so GRPO logs them every step at weight 0: the curves of the "aha" moment.
@register("search_behaviour")
def search_behaviour(completion: str, nums: Sequence[int] = (), target: int = 0) -> tuple[float, str]:
    """1.0 when the reasoning tries alternatives or verifies (see `shows_search`); a behaviour, not correctness."""
    n = len(_SEARCH.findall(completion.split("</think>", 1)[0]))
    return (1.0 if n >= 2 else 0.0), f"{n} search cue{'s' * (n != 1)}"


@register("self_check")
def self_check_behaviour(completion: str, nums: Sequence[int] = (), target: int = 0) -> tuple[float, str]:
    """1.0 when the reasoning checks its own result; a behaviour, not correctness."""
    return (1.0, "checks its result") if self_checks(completion) else (0.0, "no self-check")
