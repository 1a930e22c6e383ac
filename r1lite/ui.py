"""Terminal output: one rich console for the whole program, progress bars with ETA, quiet mode.

When stdout is not a terminal (CI, `| tee`, Makefile logs) or `--quiet` is given, bars turn into
plain log lines every ~10 % so logs stay readable and greppable.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def is_live() -> bool:
    """Rich live widgets only on an interactive terminal and without --quiet."""
    return console.is_terminal and not _state["quiet"]


def log(message: str) -> None:
    if not _state["quiet"]:
        console.print(message, soft_wrap=True)


def say(message: str) -> None:
    """A line the user needs even with --quiet (a run continuing or starting over, settings applied)."""
    console.print(message, soft_wrap=True)


def warn(message: str) -> None:
    """A warning the user should act on: shown even with --quiet."""
    console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar (ETA included), or with plain lines when not on a terminal."""
    if is_live():
        with make_progress() as bar:
            task = bar.add_task(description, total=total, info="")
            for item in items:
                yield item
                bar.advance(task)
        return
    start, every = time.monotonic(), max(1, total // 10)
    for done, item in enumerate(items, 1):
        yield item
        if not _state["quiet"] and (done % every == 0 or done == total):
            elapsed = time.monotonic() - start
            eta = elapsed / done * (total - done)
            print(f"{description}: {done}/{total} ({elapsed:.0f}s elapsed, eta {eta:.0f}s)", flush=True)
