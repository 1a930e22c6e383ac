"""The Countdown task: numbers, a target, and + - * / to reach it using each number once.

    >>> ex = generate(1, seed=0)[0]            # {"nums": [...], "target": ..., "solution": "..."}
    >>> solve([25, 3, 4, 7], 100)              # '25 * 4' style expression, or None
    >>> Countdown().render_prompt(ex, "base")  # TinyZero's base-model prompt, ending in "<think>"
    >>> tinyzero_reward("...</think>\\n<answer>1 + 2 + 3</answer>", [1, 2, 3], 6)   # (1.0, "correct")

Everything the task needs lives here: the solver (exact fractions, exhaustive), the seeded
generator, Stream-of-Search style reasoning traces for SFT, the prompt templates and the rewards.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from r1lite.errors import DataError
from r1lite.tasks import Example, ExampleError, RewardFn, Task, last_answer, split_rows
from r1lite.tasks.arith import ExpressionError, evaluate

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
            raise DataError(
                f"found only {len(out)} of {n} distinct solvable problems in {limit} draws; widen the number or "
                "target range (data.countdown.num_min/num_max/target_min/target_max) or lower data.train_size/test_size"
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
        raise DataError(f"{nums} cannot make {target}")
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
# not TinyZero's: a one-line question for runs where prompt tokens are the cost (the 2-core CPU demo)
_COMPACT = "Make {target} from {nums} with + - * /, each number once. Answer in <answer></answer>."


# ----------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------

_ALLOWED = re.compile(r"^[\d+\-*/().\s]+$")
_NUMBER = re.compile(r"\d+")


def check_equation(equation: str, nums: Sequence[int], target: float) -> tuple[bool, str]:
    """(correct, reason) for an answer string, following TinyZero's order of checks."""
    # Runs of whitespace never change the outcome; collapsing them keeps hostile input fast.
    equation = " ".join(equation.split())
    used = _NUMBER.findall(equation)
    # a literal of hundreds of digits is never a given number (and int() refuses more than 4,300 digits)
    if any(len(n.lstrip("0")) > 30 for n in used) or sorted(int(n) for n in used) != sorted(int(n) for n in nums):
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


def equation_reward(completion: str, nums: Sequence[int], target: int) -> tuple[float, str]:
    """1.0 when the last `<answer>` anywhere in the text is a correct equation, else 0.0."""
    answer = last_answer(completion)
    if answer is None:
        return 0.0, "no <answer>...</answer>"
    ok, reason = check_equation(answer.strip(), nums, target)
    return (1.0 if ok else 0.0), reason


# ----------------------------------------------------------------------------------------------
# Problems a person types (`r1lite try`)
# ----------------------------------------------------------------------------------------------

_TYPED = "write one as numbers, an arrow and the target: 3 5 7 -> 22"
_ARROW = re.compile(r"^\s*\[?(?P<nums>[^\[\]]*?)\]?\s*(?:->|=>|→|=)\s*(?P<target>\S+)\s*$")
# the task's own wordings: question() "Using the numbers [3, 5, 7], make 22." and the prompt's "... equals 22"
_WORDED = re.compile(r"numbers\s*\[(?P<nums>[^\]]*)\].*?\b(?:make|equals?)\s+(?P<target>-?\d+)", re.I | re.S)


def problem(nums: Sequence[int], target: int) -> Example:
    """A Countdown example from numbers and a target, checked the way the solver needs them."""
    if not 2 <= len(nums) <= 6:
        raise ExampleError(f"Countdown takes 2 to 6 numbers (the solver is exhaustive); got {len(nums)}")
    if any(n < 0 for n in nums):
        raise ExampleError(f"Countdown numbers are whole numbers from 0 up; got {list(nums)}")
    return {"nums": [int(n) for n in nums], "target": int(target)}


def whole_numbers(text: str) -> list[int]:
    """`3,5,7`, `3 5 7` or `[3, 5, 7]` as [3, 5, 7]; ExampleError when a part is not a whole number."""
    parts = [p for p in re.split(r"[\s,]+", text.strip().strip("[]()")) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ExampleError(f"{text.strip()!r} is not a list of whole numbers such as 3,5,7")
    return [int(p) for p in parts]


def parse_problem(text: str) -> Example | None:
    """Numbers and a target from typed text: `3 5 7 -> 22`, `[3, 5, 7] = 22` or the task's own wording.

    None when the text does not look like a Countdown problem at all (no arrow, no "numbers [...]");
    ExampleError when it does but something in it is wrong.
    """
    match = _WORDED.search(text) or _ARROW.match(text)
    if match is None:
        if any(arrow in text for arrow in ("->", "=>", "→", "=")):
            raise ExampleError(f"{text.strip()!r} is not a Countdown problem; {_TYPED}")
        return None
    try:
        nums, target = whole_numbers(match["nums"]), int(match["target"])
    except ValueError:  # whole_numbers' ExampleError or int()'s
        raise ExampleError(f"{text.strip()!r} is not a Countdown problem; {_TYPED}") from None
    return problem(nums, target)


# ----------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------


class CountdownSettings(BaseModel):
    """The generator's knobs, under `data.countdown` in a recipe."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_counts: list[int] = Field([3, 4], min_length=1, description="how many numbers a problem has")
    num_min: int = Field(1, ge=0, description="smallest number")
    num_max: int = Field(99, ge=1, description="largest number")
    target_min: int = Field(1, description="smallest target")
    target_max: int = Field(100, description="largest target")

    @model_validator(mode="after")
    def _ranges(self) -> CountdownSettings:
        if self.num_min > self.num_max:
            raise ValueError(f"num_min ({self.num_min}) is above num_max ({self.num_max})")
        if self.target_min > self.target_max:
            raise ValueError(f"target_min ({self.target_min}) is above target_max ({self.target_max})")
        if any(not 2 <= n <= 6 for n in self.num_counts):
            raise ValueError("num_counts must be between 2 and 6 (the solver is exhaustive)")
        return self


class Countdown(Task):
    """Numbers, a target, + - * / : TinyZero's prompts and rewards, the exact solver's traces."""

    name = "countdown"
    description = "reach a target from 3-6 numbers with + - * / (TinyZero's task; solver traces for SFT)"
    Settings = CountdownSettings
    correct_reward = "countdown_equation"
    main_reward = "countdown_tinyzero"
    default_rewards = (("countdown_tinyzero", 1.0),)
    rejected_as = "unsolvable"
    fields = ("nums", "target")
    has_traces = True

    def summary(self) -> str:
        s = self.settings
        counts = sorted(set(s.num_counts))
        counts_text = " or ".join(map(str, counts)) if len(counts) < 3 else f"{counts[0]}-{counts[-1]}"
        return (
            f"reach a target from {s.target_min} to {s.target_max} with {counts_text} numbers "
            f"from {s.num_min} to {s.num_max}, each used once, and + - * /"
        )

    def _generator_args(self) -> dict[str, Any]:
        s = self.settings
        return dict(
            num_counts=s.num_counts, num_range=(s.num_min, s.num_max), target_range=(s.target_min, s.target_max)
        )

    def splits(
        self, train_size: int, test_size: int, seed: int, progress: Any = lambda x, n: x, validation_size: int = 0
    ) -> dict:
        kw = self._generator_args()
        total, chunk = test_size + validation_size + train_size, 256
        rows: list[Example] = []
        seen: set = set()
        # chunks keep the progress bar moving; each chunk has its own seed, so output is deterministic
        for i in progress(range(0, total, chunk), -(-total // chunk)):
            part = generate(min(chunk, total - i), seed=seed * 1_000_003 + i, exclude=seen, **kw)
            seen.update(example_key(r["nums"], r["target"]) for r in part)
            rows.extend(part)
        return split_rows(rows, test_size, validation_size)

    def sample(self, rng: random.Random) -> Example:
        return generate(1, seed=rng.randrange(2**31), **self._generator_args())[0]

    def key(self, example: Example) -> Any:
        return example_key(example["nums"], example["target"])

    def from_row(self, row: dict[str, Any]) -> Example | None:
        try:
            nums = row["nums"]
            if isinstance(nums, str):
                nums = json.loads(nums)
            nums, target = [int(n) for n in nums], int(row["target"])
        except (KeyError, TypeError, ValueError):
            raise ExampleError(
                f"needs 'nums' (a list of integers) and 'target' (an integer); got columns {sorted(row)}"
            ) from None
        solution = solve(nums, target)
        return None if solution is None else {"nums": nums, "target": target, "solution": solution}

    def question(self, example: Example) -> str:
        return f"Using the numbers {list(example['nums'])}, make {example['target']}."

    def instruction(self, example: Example) -> str:
        return _INSTRUCTION.format(nums=list(example["nums"]), target=example["target"])

    def compact(self, example: Example) -> str:
        return _COMPACT.format(nums=list(example["nums"]), target=example["target"])

    def answer(self, example: Example) -> str:
        return example.get("solution") or solve(example["nums"], example["target"]) or ""

    def check(self, answer: str, example: Example) -> tuple[float, str]:
        ok, reason = check_equation(answer.strip(), example["nums"], example["target"])
        return (1.0 if ok else 0.0), reason

    def rewards(self) -> dict[str, RewardFn]:
        return {
            "countdown_tinyzero": lambda c, ex: tinyzero_reward(c, ex["nums"], ex["target"]),
            "countdown_equation": lambda c, ex: equation_reward(c, ex["nums"], ex["target"]),
        }

    def parse(self, text: str) -> Example | None:
        return parse_problem(text)

    def trace(self, example: Example, rng: random.Random, style: str, max_dead_ends: int) -> str:
        return make_trace(example["nums"], example["target"], rng, max_dead_ends, style)

    def public(self, example: Example) -> dict[str, Any]:
        return {"nums": example["nums"], "target": example["target"]}

    def label(self, example: Example) -> str:
        return f"{list(example['nums'])} → {example['target']}"
