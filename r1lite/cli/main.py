"""The `r1lite` command: wires the sub-commands together and turns our errors into one line + exit 2."""

from __future__ import annotations

import errno
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from r1lite.errors import R1liteError

# permission denied, no such file or directory, not a directory, read-only file system, is a directory
_WHERE_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EROFS, errno.EISDIR}


class _Group(TyperGroup):
    """Catches r1lite's own errors once, for every sub-command: one line on stderr, no traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as e:
            if e.errno not in _WHERE_ERRORS or not e.filename:
                raise
            from r1lite.ui import err_console

            # a folder or file the user pointed at that cannot be written or read: the path, why, exit 2
            err_console.print(
                f"[bold red]error:[/] {e.filename}: {e.strerror}; choose a path you can use", soft_wrap=True
            )
            raise typer.Exit(2) from None
        except R1liteError as e:
            from r1lite.runs.signals import Interrupted
            from r1lite.ui import err_console

            prefix = "" if isinstance(e, Interrupted) else "[bold red]error:[/] "  # a signal is not an error
            err_console.print(f"{prefix}{e}", markup=bool(prefix), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="r1lite: R1-Zero-style reasoning on Countdown or any verifiable task, with LoRA SFT + 4-bit GRPO on one GPU.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _register() -> None:
    from r1lite.cli import data, doctor, export, plan, recipes, report, score, sweep, tasks, train, try_

    app.command("data")(data.data)
    app.add_typer(recipes.app, name="recipes")
    app.add_typer(tasks.app, name="tasks")
    app.command("score")(score.score)
    train.register(app)
    app.command("report")(report.report)
    app.add_typer(report.runs_app, name="runs")
    app.command("doctor")(doctor.doctor)
    app.command("plan")(plan.plan)
    app.command("sweep")(sweep.sweep)
    app.command("try")(try_.try_)
    app.command("export")(export.export)


@app.callback()
def _root(quiet: Annotated[bool, typer.Option("--quiet", "-q", help="plain, minimal output")] = False) -> None:
    from r1lite.machine.distributed import is_main
    from r1lite.ui import is_live, set_quiet

    set_quiet(quiet or not is_main())  # one process of several speaks
    _quiet_libraries(plain=not is_live())


def _quiet_libraries(plain: bool) -> None:
    """Library chatter (deprecation warnings, per-map progress bars) drowns our own lines; keep errors."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if plain:  # progress bars become garbage in logs; ours print plain lines instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    libraries = r"(torch|transformers|peft|trl|bitsandbytes|accelerate|datasets)(\.|$)"
    warnings.filterwarnings("ignore", category=UserWarning, module=libraries)


@app.command()
def version() -> None:
    """Print r1lite's version."""
    from r1lite import __version__

    print(f"r1lite {__version__}")


_register()


def main() -> None:
    app()
