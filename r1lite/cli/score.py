"""`r1lite score countdown`: score completions with every registered reward and say why."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from r1lite.errors import DataError

app = typer.Typer(help="Score completions with the task's rewards (JSONL in, JSONL out).", no_args_is_help=True)


@app.command("countdown")
def countdown(
    path: Annotated[str, typer.Argument(help="JSONL with completion, nums, target per line; '-' for stdin")] = "-",
    out: Annotated[str | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Add {reward, reason} for each registered reward to every line."""
    from r1lite.fileio import write_jsonl
    from r1lite.rewards import get_reward, reward_names

    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            completion, nums, target = row["completion"], row["nums"], row["target"]
        except json.JSONDecodeError:
            raise DataError(f"line {i} is not JSON") from None
        except (KeyError, TypeError):
            raise DataError(f"line {i} needs 'completion', 'nums' and 'target'") from None
        scores = {}
        for name in reward_names():
            reward, reason = get_reward(name)(completion, nums, target)
            scores[name] = {"reward": reward, "reason": reason}
        rows.append({**row, "scores": scores})
    if out:
        write_jsonl(out, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
