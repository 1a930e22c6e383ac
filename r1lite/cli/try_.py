"""`r1lite try RUN [TEXT]`: a run's trained model on a problem of your own, streamed and scored.

    r1lite try runs/countdown-cpu "3 5 7 -> 22"
    r1lite try runs/countdown-cpu --nums 3,5,7 --target 22 --compare base
    r1lite try runs/countdown-cpu                      # type problems one by one; a blank line leaves

The work lives in `r1lite.share.export` (Playground); this module parses options and prints.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from r1lite.cli.report import RunArg
from r1lite.errors import R1liteError

AdapterOpt = Annotated[
    str | None, typer.Option(help="LoRA adapter folder (default: the run's final one, grpo/adapter, else sft/adapter)")
]


def try_(
    run: RunArg,
    text: Annotated[
        str | None,
        typer.Argument(help="the problem (Countdown: '3 5 7 -> 22'); without it, type problems one by one"),
    ] = None,
    nums: Annotated[str | None, typer.Option(help="Countdown's numbers, e.g. 3,5,7")] = None,
    target: Annotated[int | None, typer.Option(help="Countdown's target, e.g. 22")] = None,
    adapter: AdapterOpt = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="sampling temperature; 0: greedy, as the evals")] = 0.0,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="at most this many tokens (default: the recipe's eval.max_new_tokens)")
    ] = None,
    compare: Annotated[
        str | None, typer.Option(help="'base': the model before training answers the same problem first")
    ] = None,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="print the prompt the model sees")] = False,
) -> None:
    """Stream the trained model's answer to a problem, scored with the task's rewards and their reasons."""
    from r1lite.share.playground import Playground, read_problem
    from r1lite.share.trained import open_run
    from r1lite.ui import console

    if compare not in (None, "base"):
        raise R1liteError(f"--compare takes 'base' (the model before training); got {compare!r}")
    trained = open_run(run, adapter)
    given = text is not None or nums is not None or target is not None
    first = read_problem(trained.task, text, nums, target) if given else None  # a typo costs no model load
    console.print(f"[dim]{trained.root.name}: {trained.adapter} on {trained.recipe.model.name}[/]", soft_wrap=True)
    play = Playground(trained)
    options = {"compare": compare == "base", "temperature": temperature, "max_new_tokens": max_new_tokens}
    if first is not None:
        _show(play, first, show_prompt, **options)
    else:
        _loop(play, show_prompt, **options)


def _loop(play: Any, show_prompt: bool, **options: Any) -> None:
    """Problems typed one per line until a blank line or Ctrl-D; a malformed one is reported and skipped,
    Ctrl-C stops the answer being written."""
    from r1lite.share.playground import read_problem
    from r1lite.ui import console, err_console

    example = "3 5 7 -> 22" if play.task.name == "countdown" else "a question"
    console.print(f"Type a problem ({example}) and press Enter; a blank line or Ctrl-D leaves.")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not line.strip():
            return
        try:
            _show(play, read_problem(play.task, line), show_prompt, **options)
        except R1liteError as e:
            err_console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        except KeyboardInterrupt:
            console.print("\n[dim](stopped)[/]")


def _show(play: Any, problem: Any, show_prompt: bool, compare: bool, **options: Any) -> None:
    """Each answer streamed under its model's name, then one table of scores with a column per model."""
    from r1lite.share.playground import right_answer, write_stdout
    from r1lite.ui import console

    console.print(f"[bold]problem:[/] {problem.text}", markup=True, soft_wrap=True)
    if show_prompt:
        console.rule("prompt")
        console.print(play.prompt(problem), markup=False, soft_wrap=True)
    answers = []
    for base in [True, False] if compare else [False]:
        console.rule("base" if base else "trained")
        answers.append(play.answer(problem, base=base, echo=write_stdout, **options))
        write_stdout("\n")
    if problem.example is None:
        console.print(problem.unscored, soft_wrap=True)
        return
    console.print(_scores(answers))
    for answer in answers:
        console.print(_verdict(answer, len(answers) > 1), soft_wrap=True)
    solution = right_answer(play.task, problem.example)
    console.print(f"a right answer: {solution}" if solution else "no right answer exists for this problem")


def _scores(answers: list[Any]) -> Any:
    from rich.table import Table

    table = Table("reward", "in training", title="score and reason")
    for answer in answers:
        table.add_column(answer.who, overflow="fold")  # `<answer>...</answer>` whole, not cut to an ellipsis
    for i, first in enumerate(answers[0].scores):
        name = f"{first.reward} (accuracy)" if first.accuracy else first.reward
        weight = "-" if first.weight is None else f"weight {first.weight:g}"
        table.add_row(name, weight, *[f"{a.scores[i].value:g}  {a.scores[i].reason}" for a in answers])
    return table


def _verdict(answer: Any, named: bool) -> str:
    who = f"{answer.who}: " if named else ""
    right = answer.correct
    if right is None:
        return f"{who}{answer.tokens} tokens"
    mark = "[green]✓ correct[/]" if right.value == 1.0 else f"[red]✗ wrong[/]: {right.reason}"
    return f"{who}{mark} ({answer.tokens} tokens)"
