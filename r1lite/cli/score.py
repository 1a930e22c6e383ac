"""`r1lite score TASK [FILE|-]`: score completions with every reward of the task and say why."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from r1lite.cli.data import TaskArg
from r1lite.errors import DataError


def _lines(path: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None


def score(
    task: TaskArg,
    path: Annotated[
        str,
        typer.Argument(
            help="JSONL: a completion plus the example's fields per line (as in the task's data files); '-' for stdin"
        ),
    ] = "-",
    out: Annotated[str | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Add {reward, reason} for each of the task's rewards to every line.

    Countdown rows: completion, nums, target. reasoning-gym rows: completion, question, answer, metadata
    (an entry of the generator plus the completion).
    """
    from r1lite.fileio import check_writable, write_jsonl
    from r1lite.tasks.registry import load_task
    from r1lite.tasks.rewards import rewards_for

    if out:
        check_writable(out, "--out")

    t = load_task(task)
    table = rewards_for(t)
    need = ["completion", *t.fields]
    rows = []
    for i, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {i} is not JSON") from None
        if not isinstance(row, dict) or any(k not in row for k in need):
            raise DataError(f"line {i} needs {', '.join(repr(k) for k in need[:-1])} and {need[-1]!r}")
        example = {k: v for k, v in row.items() if k not in ("completion", "scores")}
        scores = {}
        for name in sorted(table):
            try:
                reward, reason = table[name](row["completion"], example)
            except (KeyError, TypeError, ValueError) as e:
                raise DataError(
                    f"line {i}: {name} cannot score it ({type(e).__name__}: {e}); is it a {task} example?"
                ) from None
            scores[name] = {"reward": reward, "reason": reason}
        rows.append({**row, "scores": scores})
    if out:
        write_jsonl(out, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
