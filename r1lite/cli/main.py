"""The `r1lite` command: wires the sub-commands together and turns our errors into one line + exit 2."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from r1lite.errors import R1liteError


class _Group(TyperGroup):
    """Catches r1lite's own errors once, for every sub-command: one line on stderr, no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except R1liteError as e:
            from r1lite.ui import err_console

            err_console.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="r1lite: reproduce R1-Zero-style reasoning on Countdown with LoRA SFT + 4-bit GRPO on one GPU.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from r1lite.cli import data, recipes, score, train

    app.add_typer(data.app, name="data")
    app.add_typer(recipes.app, name="recipes")
    app.add_typer(score.app, name="score")
    train.register(app)


@app.callback()
def _root(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="plain, minimal output")] = False) -> None:
    from r1lite.ui import set_quiet

    set_quiet(quiet)


@app.command()
def version() -> None:
    """Print r1lite's version."""
    from r1lite import __version__

    print(f"r1lite {__version__}")


_register()


def main() -> None:
    app()
