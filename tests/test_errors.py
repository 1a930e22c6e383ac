"""A place the user points at that cannot be written is one line naming it, exit 2, before any work."""

from __future__ import annotations

from typer.testing import CliRunner

from r1lite.cli.main import app

runner = CliRunner()


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_export_to_a_folder_that_cannot_be_made_says_so_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    line = one_line_error(["export", str(tmp_path / "run"), "--out", "/proc/r1lite-x"])
    assert line.startswith("error: --out /proc/r1lite-x: cannot write in /proc")


def test_data_and_score_outputs_that_cannot_be_written_say_so_in_one_line(tmp_path):
    line = one_line_error(["data", "countdown", "--out", "/proc/r1lite-x/data"])
    assert "--out /proc/r1lite-x/data/manifest.json: cannot write" in line
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"completion": "<answer>1+2</answer>", "nums": [1, 2], "target": 3}\n')
    line = one_line_error(["score", "countdown", str(rows), "--out", "/proc/r1lite-x/scores.jsonl"])
    assert "--out /proc/r1lite-x/scores.jsonl: cannot write in /proc/r1lite-x" in line
