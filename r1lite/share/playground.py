"""`r1lite try`: a trained run answering a problem of your own, streamed and scored with the task's rewards.

>>> play = Playground(open_run(Path("runs/countdown-cpu")))     # base + adapter, loaded once
>>> answer = play.answer(play.problem("3 5 7 -> 22"))           # a completion scored with the task's rewards
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from r1lite.errors import R1liteError
from r1lite.recipe.config import Recipe
from r1lite.share.trained import TrainedRun, runnable
from r1lite.stages.evaluate import decode_completion
from r1lite.tasks import Example, Task, countdown
from r1lite.tasks.rewards import rewards_for
from r1lite.train.models import load_for_inference, load_tokenizer, resolve_model


class ProblemError(R1liteError):
    """A problem given to `r1lite try` is malformed (a Countdown problem without a target, a bad number)."""


@dataclass(frozen=True)
class Problem:
    text: str  # what the person gave, as shown back
    example: Example | None  # what the task's rewards score; None: text the task cannot read a problem from
    unscored: str = ""  # why there is no score, when there is none


@dataclass(frozen=True)
class Score:
    reward: str
    value: float
    reason: str
    weight: float | None  # its weight in GRPO; None: not a training reward
    accuracy: bool  # the eval's reward, whose 1.0 means correct


@dataclass(frozen=True)
class Answer:
    who: str  # "base" or "trained"
    completion: str
    tokens: int
    scores: list[Score]

    @property
    def correct(self) -> Score | None:
        return next((s for s in self.scores if s.accuracy), None)


def read_problem(task: Task, text: str | None, nums: str | None = None, target: int | None = None) -> Problem:
    """The problem from typed text (the task's `parse`) or, for Countdown, from --nums and --target."""
    if nums is not None or target is not None:
        return _from_options(task, text, nums, target)
    text = (text or "").strip()
    if not text:
        raise ProblemError("the problem is empty")
    try:
        example = task.parse(text)
    except ValueError as e:
        raise ProblemError(str(e)) from None
    if example is None:
        return Problem(text, None, _why_unscored(task))
    return Problem(task.label(example), example)


def _from_options(task: Task, text: str | None, nums: str | None, target: int | None) -> Problem:
    if task.name != "countdown":
        raise ProblemError(f"--nums and --target are Countdown's; this run's task is {task.spec}: give TEXT instead")
    if text:
        raise ProblemError("give the problem as TEXT or as --nums and --target, not both")
    if nums is None or target is None:
        raise ProblemError("--nums and --target go together, e.g. --nums 3,5,7 --target 22")
    try:
        example = countdown.problem(countdown.whole_numbers(nums), target)
    except ValueError as e:
        raise ProblemError(f"--nums: {e}") from None
    return Problem(task.label(example), example)


def _why_unscored(task: Task) -> str:
    if task.name == "countdown":
        return (
            "unscored: not a Countdown problem (write one as 3 5 7 -> 22, or give --nums and --target); "
            "the model answered the text as it is"
        )
    return (
        f"unscored: task {task.spec or task.name} checks answers against a generated problem's data, "
        "which typed text does not carry"
    )


def score(recipe: Recipe, example: Example, completion: str) -> list[Score]:
    """Every reward of the task on one completion: the eval's reward first, then GRPO's, then the rest."""
    table = rewards_for(recipe.data.make_task())
    weights = {r.name: r.weight for r in recipe.grpo.rewards or []}
    names = list(dict.fromkeys([recipe.eval.reward, *weights, *sorted(table)]))
    return [Score(n, *table[n](completion, example), weights.get(n), n == recipe.eval.reward) for n in names]


def right_answer(task: Task, example: Example) -> str:
    """A right answer to show after the model's ('' when none exists: an unsolvable Countdown problem)."""
    try:
        return task.answer(example)
    except (KeyError, TypeError, ValueError):
        return ""


def complete(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    echo: Callable[[str], None] | None = None,
) -> tuple[str, int]:
    """One completion of `prompt`, decoded as the evals decode; `echo` gets each piece of text as it is generated.

    Greedy at temperature 0 and otherwise sampled with the eval's pass@k settings (no top-k, no top-p),
    so a greedy answer here is the one the held-out eval would have scored.
    """
    import torch

    enc = tokenizer(text=[prompt], return_tensors="pt").to(next(model.parameters()).device)
    sampling = {"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {}
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=temperature > 0,
            streamer=_streamer(tokenizer, echo) if echo else None,
            **sampling,
        )
    return decode_completion(tokenizer, out[0, enc["input_ids"].shape[1] :].tolist())


def _streamer(tokenizer: Any, echo: Callable[[str], None]) -> Any:
    """transformers' TextStreamer (whole words, the prompt skipped), writing through `echo` instead of print."""
    from transformers import TextStreamer

    class Echo(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            echo(text)

    return Echo(tokenizer, skip_prompt=True, skip_special_tokens=True)


def write_stdout(text: str) -> None:
    """Tokens to the terminal as they come (flushed: stdout is line-buffered and a completion has few lines)."""
    sys.stdout.write(text)
    sys.stdout.flush()


class Playground:
    """A run's base model and adapter, loaded once, answering problems in the run's prompt format."""

    def __init__(self, run: TrainedRun) -> None:
        r = run.recipe
        path = resolve_model(r.model.name)
        self.run, self.task = run, run.task
        self.tokenizer = load_tokenizer(path, r.model.revision)
        self.model = load_for_inference(path, runnable(r.model), r.quantization, str(run.adapter))

    def problem(self, text: str | None = None, nums: str | None = None, target: int | None = None) -> Problem:
        return read_problem(self.task, text, nums, target)

    def prompt(self, problem: Problem) -> str:
        """The text the model sees: the run's prompt format around the problem (free text as the question)."""
        fmt = self.run.recipe.data.prompt_format
        if problem.example is not None:
            return self.task.render_prompt(problem.example, fmt, self.tokenizer)
        return Task().render_prompt({"question": problem.text}, fmt, self.tokenizer)

    def answer(
        self,
        problem: Problem,
        base: bool = False,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        echo: Callable[[str], None] | None = None,
    ) -> Answer:
        """A completion by the trained model, or with `base` by the same model with its adapter switched off."""
        off = self.model.disable_adapter() if base else contextlib.nullcontext()
        with off:
            text, tokens = complete(
                self.model,
                self.tokenizer,
                self.prompt(problem),
                max_new_tokens or self.run.recipe.eval.max_new_tokens,
                temperature,
                echo,
            )
        scores = score(self.run.recipe, problem.example, text) if problem.example is not None else []
        return Answer("base" if base else "trained", text, tokens, scores)
