"""`r1lite tasks list|show`: which tasks exist, and what one looks like to the model and to its rewards."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from r1lite.cli.common import ProfileOpt, SetOpt
from r1lite.cli.data import TaskArg
from r1lite.ui import console

app = typer.Typer(
    help="List tasks (built in and reasoning-gym) and show one: prompt, answer, rewards.", no_args_is_help=True
)


@app.command("list")
def list_() -> None:
    """Built-in tasks and every reasoning-gym generator (rg:<name>), with whether r1lite has verified it."""
    from r1lite.tasks.registry import BUILTIN, task_class

    table = Table("task", "source", "verified", "description")
    for name in BUILTIN:
        table.add_row(name, "r1lite", "yes", task_class(name).description)
    try:
        from r1lite.tasks.rg import VERIFIED, names
    except ImportError:  # pragma: no cover - reasoning-gym is a dependency
        names = None
    if names is not None:
        from reasoning_gym.factory import DATASETS

        for name in names():
            doc = (DATASETS[name][0].__doc__ or "").strip().splitlines()
            table.add_row(f"rg:{name}", "reasoning-gym", "yes" if name in VERIFIED else "no", doc[0] if doc else "")
    console.print(table)
    console.print("your own: data.task: path/to/my_task.py (a Task subclass; see docs/tasks.md)", markup=False)


@app.command("show")
def show(
    task: TaskArg,
    fmt: Annotated[str, typer.Option("--format", help="prompt format: base, qwen-instruct, compact")] = "base",
    seed: Annotated[int, typer.Option(help="which sample to draw")] = 0,
    recipe: Annotated[
        str | None, typer.Option(help="recipe whose task settings to use (default: the one for TASK)")
    ] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
) -> None:
    """A sample prompt, its answer, and how a right and a wrong completion score under every reward."""
    from r1lite.recipe.load import task_recipe
    from r1lite.tasks import PROMPT_FORMATS
    from r1lite.tasks.rewards import rewards_for

    if fmt not in PROMPT_FORMATS or fmt == "chat":
        raise typer.BadParameter(
            "use base, qwen-instruct or compact (chat needs a model's tokenizer)", param_hint="--format"
        )
    r = task_recipe(task, recipe, profile, set_ or [])
    t = r.data.make_task()
    stream = t.stream(seed)
    example = next(stream)
    answer = t.answer(example)
    wrong = next((t.answer(e) for e, _ in zip(stream, range(50), strict=False) if t.answer(e) != answer), "0")
    console.rule(f"[bold]{task}[/] — {t.description}")
    if r.data.settings:
        console.print(f"settings (data.{t.name}): {r.data.settings}", markup=False, soft_wrap=True)
    console.print(f"\n[bold]prompt[/] ({fmt} format):")
    console.print(t.render_prompt(example, fmt), markup=False, soft_wrap=True)
    console.print(f"\n[bold]answer:[/] {answer}", soft_wrap=True)
    table = Table("reward", f"right: <answer>{_clip(answer)}</answer>", f"wrong: <answer>{_clip(wrong)}</answer>")
    for name, fn in sorted(rewards_for(t).items()):
        cells = []
        for text in (answer, wrong):
            reward, reason = fn(f"...\n</think>\n<answer>{text}</answer>", example)
            cells.append(f"{reward:g}  {reason}")
        table.add_row(name, *cells)
    console.print(table)
    trained = ", ".join(f"{w.name} x{w.weight:g}" for w in r.grpo.rewards or [])
    console.print(f"GRPO trains on: {trained}; accuracy is {r.eval.reward} = 1", markup=False)


def _clip(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
