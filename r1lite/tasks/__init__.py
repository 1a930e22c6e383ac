"""Tasks: what r1lite trains on. A task is its data, its prompt and its reward, in one module.

    >>> from r1lite.tasks.registry import load_task
    >>> task = load_task("countdown")                 # built in (r1lite/tasks/countdown.py)
    >>> task = load_task("rg:knights_knaves")         # any reasoning-gym generator
    >>> task = load_task("my_task.py")                # your own: a file with one Task subclass
    >>> ex = task.sample(random.Random(0))            # one problem, a JSON-able dict
    >>> task.render_prompt(ex, "base")                # ends in "<think>"
    >>> task.rewards()["answer"](completion, ex)      # (1.0, "correct")

A task must say how to draw a problem (`sample`), how to ask it (`question`) and, unless its
examples carry an `answer` to compare with, how to check an answer (`check`). Everything else has
a default that follows the R1-Zero protocol: prompts in every format that open a `<think>` block
and ask for the result in `<answer>...</answer>`, an `answer` reward that checks the last answer
block, de-duplicated train/test splits, answer-only warm-up completions. Settings a task takes
(its `Settings` model) live under `data.<name>` in the recipe and are validated like every other key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from r1lite.errors import DataError, R1liteError

Example = dict[str, Any]
RewardFn = Callable[[str, Example], tuple[float, str]]

PROMPT_FORMATS = ("base", "qwen-instruct", "chat", "compact")
ASSISTANT_PREFIX = "Let me solve this step by step.\n<think>"
PROTOCOL = "Show your work in <think> </think> tags. And return the final answer in <answer> </answer> tags."
SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind and then "
    "provides the user with the answer."
)  # TinyZero's system prompt, grammar and all: the Countdown numbers in the literature used it
BASE_PREAMBLE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer.\nUser: "
)


class TaskError(R1liteError):
    """A task name, file or module cannot be resolved, or a task does not implement the interface."""


class ExampleError(DataError, ValueError):
    """A row or a typed problem a task cannot read. A ValueError too: the interface lets a task file raise a plain
    ValueError from `from_row` and `parse`, so r1lite catches ValueError there and both kinds read the same."""


class NoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


def split_rows(rows: list[Example], test_size: int, validation_size: int) -> dict[str, list[Example]]:
    """Test first (it never moves when the other sizes change), then validation, then train."""
    cut = test_size + validation_size
    return {"test": rows[:test_size], "validation": rows[test_size:cut], "train": rows[cut:]}


class Task:
    """The interface a task implements; subclass it and override what your task needs."""

    name: ClassVar[str] = ""  # recipe key of the settings (data.<name>) and default data folder
    description: ClassVar[str] = ""
    Settings: ClassVar[type[BaseModel]] = NoSettings
    correct_reward: ClassVar[str] = "answer"  # the reward whose 1.0 means "correct" (accuracy)
    main_reward: ClassVar[str] = "answer"  # eval's mean_reward
    default_rewards: ClassVar[tuple[tuple[str, float], ...]] = (("answer", 1.0), ("think_format", 0.1))
    rejected_as: ClassVar[str] = "invalid"  # what imported rows that `from_row` drops are counted as
    fields: ClassVar[tuple[str, ...]] = ("answer",)  # example fields the rewards read (`r1lite score` checks them)
    slug: ClassVar[str] = ""  # folder-safe name when `name` is not one (rg:maze -> rg-maze)
    spec: str = ""  # how the recipe named it (set by load_task)

    def __init__(self, settings: BaseModel | dict[str, Any] | None = None) -> None:
        if isinstance(settings, BaseModel):
            settings = settings.model_dump()
        self.settings = self.Settings.model_validate(settings or {})

    def summary(self) -> str:
        """What this task's problems are under its settings (a model card describes the run, not the task's
        full range)."""
        return self.description

    # -- data ------------------------------------------------------------------------------------
    def sample(self, rng: random.Random) -> Example:
        """One random problem as a JSON-able dict (drawn only from `rng`, so data is seeded)."""
        raise NotImplementedError(f"task {self.name} does not implement sample(rng)")

    def stream(self, seed: int) -> Iterator[Example]:
        """Endless problems for `seed`; tasks whose generator is indexed rather than drawn override it."""
        rng = random.Random(seed)
        while True:
            yield self.sample(rng)

    def key(self, example: Example) -> Hashable:
        """Identity of a problem: equal keys are duplicates and never land in both splits."""
        return self.question(example)

    def splits(
        self, train_size: int, test_size: int, seed: int, progress: Callable = lambda x, n: x, validation_size: int = 0
    ) -> dict:
        """Distinct problems, the test split first so it depends on neither the train nor the validation size, then
        the validation split, then train."""
        total, seen, rows, draws = train_size + validation_size + test_size, set(), [], 0
        limit = 20 * total + 1_000
        bar = iter(progress(range(total), total))  # advanced once per kept problem
        for ex in self.stream(seed):
            draws += 1
            if draws > limit:
                raise DataError(
                    f"task {self.spec or self.name}: found only {len(rows)} distinct problems in {limit} draws, "
                    f"{total} wanted; lower data.train_size/test_size or widen the task's settings"
                )
            k = self.key(ex)
            if k in seen:
                continue
            seen.add(k)
            rows.append(ex)
            next(bar, None)
            if len(rows) == total:
                break
        for _ in bar:  # let the progress bar finish
            pass
        return split_rows(rows, test_size, validation_size)

    def from_row(self, row: dict[str, Any]) -> Example | None:
        """An imported row as an example; None drops it (counted as `rejected_as`); ExampleError: bad layout."""
        if "question" not in row or "answer" not in row:
            raise ExampleError(f"needs 'question' and 'answer' columns; got {sorted(row)}")
        return dict(row)

    # -- prompt ----------------------------------------------------------------------------------
    def question(self, example: Example) -> str:
        """The problem in words, without the answer protocol."""
        return str(example["question"])

    def instruction(self, example: Example) -> str:
        """The user turn of the base and chat formats: the question and the `<think>/<answer>` protocol."""
        return f"{self.question(example)} {PROTOCOL}"

    def compact(self, example: Example) -> str:
        """The one-line user turn of the compact format (for runs where prompt tokens are the cost)."""
        return f"{self.question(example)} Answer in <answer></answer>."

    def render_prompt(self, example: Example, fmt: str, tokenizer: Any = None) -> str:
        """Prompt text in format `fmt`; every format ends in `<think>` so completions are comparable."""
        if fmt == "base":
            return BASE_PREAMBLE + self.instruction(example) + "\nAssistant: " + ASSISTANT_PREFIX
        if fmt == "qwen-instruct":  # ChatML written out by hand, as TinyZero did
            return (
                f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n {self.instruction(example)}"
                "<|im_end|>\n<|im_start|>assistant\n" + ASSISTANT_PREFIX
            )
        if fmt == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise TaskError("prompt format 'chat' needs a tokenizer with a chat template; use 'base' or 'compact'")
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.instruction(example)}]
            return (
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ASSISTANT_PREFIX
            )
        if fmt == "compact":
            question = self.compact(example)
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                return f"{question}\n<think>"
            # an empty system turn: a template's default system prompt (SmolLM2's is 16 tokens) would be a third
            # of every CPU prompt, paid in every prefill and every training sequence
            messages = [{"role": "system", "content": ""}, {"role": "user", "content": question}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "<think>"
        raise TaskError(f"unknown prompt format {fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")

    # -- answers and rewards ---------------------------------------------------------------------
    def answer(self, example: Example) -> str:
        """A right answer, as it goes between the answer tags (warm-ups and `r1lite tasks show` use it)."""
        return str(example["answer"])

    def check(self, answer: str, example: Example) -> tuple[float, str]:
        """(score in [0, 1], reason) for the text of the last answer block; 1.0 means correct."""
        want = self.answer(example).strip()
        got = answer.strip()
        return (1.0, "correct") if got == want else (0.0, f"{_short(repr(got))} is not {_short(repr(want))}")

    def answer_reward(self, completion: str, example: Example) -> tuple[float, str]:
        """`check` applied to the last `<answer>...</answer>` of the completion."""
        answer = last_answer(completion)
        if answer is None:
            return 0.0, "no <answer>...</answer>"
        return self.check(answer, example)

    def rewards(self) -> dict[str, RewardFn]:
        """The task's own rewards by name; the protocol's (think_format, behaviours) are added to them."""
        return {"answer": self.answer_reward}

    def parse(self, text: str) -> Example | None:
        """The problem a person typed (`r1lite try`), or None when this task cannot read one from free text.

        Only a task whose rewards need nothing but what a person can type (Countdown: numbers and a
        target) can score a typed problem; the default reads none, so `try` answers the text unscored.
        Raise ExampleError for text that is meant as a problem but is malformed; its message is shown as is.
        """
        return None

    # -- warm-up and eval ------------------------------------------------------------------------
    has_traces: ClassVar[bool] = False

    def trace(self, example: Example, rng: random.Random, style: str, max_dead_ends: int) -> str:
        """A reasoning trace continuing the prompt's `<think>` and ending in the answer (solver tasks only)."""
        raise NotImplementedError(f"task {self.name} has no solver traces")

    def answer_only(self, example: Example) -> str:
        """The warm-up completion of a task without traces: close the think block, give the answer."""
        return f"\n</think>\n<answer>{self.answer(example)}</answer>"

    def metrics(self, example: Example, completion: str) -> dict[str, float]:
        """Extra per-example eval numbers; eval reports their mean under the same names."""
        return {}

    def public(self, example: Example) -> dict[str, Any]:
        """The example's fields an eval row carries (the rest stays in the data files)."""
        return {"question": self.question(example), "answer": self.answer(example)}

    def label(self, example: Example) -> str:
        """A one-line name of the problem for tables and live views."""
        return _short(" ".join(self.question(example).split()), 100)

    @classmethod
    def folder(cls) -> str:
        """The default data folder's name, data/<folder>: the `slug` when a task sets one, else its name."""
        return cls.slug or cls.name


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
