"""The CLI through Typer's runner: exit codes, exact one-line errors, files written."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.fileio import read_json, read_jsonl
from r1lite.tasks.countdown import example_key

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_version_and_help():
    assert invoke("version").output.startswith("r1lite ")
    for cmd in ([], ["data"], ["recipes"], ["score"], ["data", "countdown"], ["score", "countdown"]):
        assert invoke(*cmd, "--help").exit_code == 0


def test_data_countdown_writes_verified_splits_and_reuses_them(tmp_path):
    args = ("data", "countdown", "--train-size", "200", "--test-size", "50", "--out", "d")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    manifest = read_json(tmp_path / "d/manifest.json")
    assert manifest["files"]["train.jsonl"]["rows"] == 200 and manifest["files"]["test.jsonl"]["rows"] == 50
    train, test = read_jsonl(tmp_path / "d/train.jsonl"), read_jsonl(tmp_path / "d/test.jsonl")
    assert not {example_key(r["nums"], r["target"]) for r in train} & {
        example_key(r["nums"], r["target"]) for r in test
    }
    mtime = (tmp_path / "d/train.jsonl").stat().st_mtime_ns
    again = invoke(*args)
    assert "up to date" in again.output and (tmp_path / "d/train.jsonl").stat().st_mtime_ns == mtime
    # the test split does not depend on the train size
    invoke("data", "countdown", "--train-size", "20", "--test-size", "50", "--out", "d2")
    assert read_jsonl(tmp_path / "d2/test.jsonl") == test


def test_data_import_from_local_files(tmp_path):
    rows = [{"nums": [1, 2, 3], "target": 6}, {"nums": [3, 2, 1], "target": 6}, {"nums": [1, 1, 1], "target": 99}]
    rows += [{"nums": [i, 2, 3], "target": i + 5} for i in range(4, 30)]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "in.csv").write_text("nums,target\n" + "\n".join(f'"{r["nums"]}",{r["target"]}' for r in rows))
    for src in ("in.jsonl", "in.csv"):
        out = f"out-{src}"
        result = invoke("data", "countdown", "--from", src, "--test-size", "5", "--validation-size", "0", "--out", out)
        assert result.exit_code == 0, result.output
        m = read_json(tmp_path / out / "manifest.json")
        assert m["import"] == {"read": 29, "duplicates": 1, "unsolvable": 1}
        assert m["files"]["test.jsonl"]["rows"] == 5 and m["files"]["train.jsonl"]["rows"] == 22


def test_data_import_from_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"target": [i + 5 for i in range(4, 20)], "nums": [[i, 2, 3] for i in range(4, 20)]}),
        tmp_path / "t.parquet",
    )
    assert (
        invoke(
            "data", "countdown", "--from", "t.parquet", "--test-size", "4", "--validation-size", "0", "--out", "p"
        ).exit_code
        == 0
    )
    assert len(read_jsonl(tmp_path / "p/train.jsonl")) == 12


def _hub_rows() -> list[dict]:
    rows = [{"nums": [1, 2, 3], "target": 6}, {"nums": [3, 2, 1], "target": 6}, {"nums": [1, 1, 1], "target": 99}]
    return rows + [{"nums": [i, 2, 3], "target": i + 5} for i in range(4, 30)]


def test_data_import_from_a_hub_dataset(tmp_path):
    """`--from hf:OWNER/NAME` reads the dataset's train split through `datasets.load_dataset`, as from the Hub. A Hub
    dataset repo is a folder of data files, and load_dataset resolves a folder of that layout by the same name, so
    the import is tested offline: every row goes through the task (a duplicate and an unsolvable one dropped)."""
    import datasets

    datasets.Dataset.from_list(_hub_rows()).to_parquet("me/countdown-problems/data/train-00000-of-00001.parquet")
    result = invoke(
        "data",
        "countdown",
        "--from",
        "hf:me/countdown-problems",
        "--test-size",
        "5",
        "--validation-size",
        "0",
        "--out",
        "h",
    )
    assert result.exit_code == 0, result.output
    m = read_json(tmp_path / "h/manifest.json")
    assert m["import"] == {"read": 29, "duplicates": 1, "unsolvable": 1}
    assert m["params"]["source"] == "hf:me/countdown-problems"
    train, test = read_jsonl(tmp_path / "h/train.jsonl"), read_jsonl(tmp_path / "h/test.jsonl")
    assert len(test) == 5 and len(train) == 22
    imported = {example_key(r["nums"], r["target"]) for r in train + test}
    assert imported == {example_key(r["nums"], r["target"]) for r in _hub_rows()} - {example_key([1, 1, 1], 99)}
    r = invoke("data", "countdown", "--from", "hf:me/no-such-dataset", "--out", "none")
    assert r.exit_code == 2 and r.output.strip().startswith("error: could not load hf:me/no-such-dataset")
    assert not list(tmp_path.glob("none/**/*.*"))  # nothing written (the --out folder may have been checked)


def test_data_import_from_a_dataset_saved_with_save_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_list(_hub_rows()).save_to_disk("saved")
    result = invoke(
        "data", "countdown", "--from", "hf:saved", "--test-size", "5", "--validation-size", "0", "--out", "s"
    )
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "s/manifest.json")["import"] == {"read": 29, "duplicates": 1, "unsolvable": 1}


def test_data_errors_are_one_line_exit_2(tmp_path):
    r = invoke("data", "countdown", "--from", "missing.parquet")
    assert r.exit_code == 2 and r.output.strip().startswith("error: --from missing.parquet: no such file")
    (tmp_path / "bad.jsonl").write_text('{"numbers": [1, 2], "target": 3}\n')
    r = invoke("data", "countdown", "--from", "bad.jsonl", "--out", "x")
    assert r.exit_code == 2 and "needs 'nums'" in r.output
    assert not list(tmp_path.glob("x/**/*.*"))  # nothing half-written (the --out folder may have been checked)
    r = invoke("data", "countdown", "--set", "data.countdown.num_min=50", "--set", "data.countdown.num_max=10")
    assert r.exit_code == 2 and "num_min (50) is above num_max (10)" in r.output
    r = invoke("data", "countdown", "--set", "data.num_min=5")  # the key before settings moved under the task
    assert r.exit_code == 2 and "write it as data.countdown.num_min" in r.output
    assert invoke("data", "countdown", "--train-size", "0").exit_code == 2
    assert invoke("data", "countdown", "--bogus").exit_code == 2


def test_recipes_commands():
    r = invoke("recipes", "list")
    assert r.exit_code == 0 and "countdown" in r.output and "knights_knaves" in r.output
    r = invoke("recipes", "show", "countdown", "--profile", "cpu", "--set", "grpo.beta=0.04")
    assert r.exit_code == 0 and "beta: 0.04" in r.output and "profile: cpu" in r.output
    r = invoke("recipes", "show", "countdown", "--set", "grpo.bta=1")
    assert r.exit_code == 2
    assert r.output.strip() == "error: unknown key 'grpo.bta'; did you mean 'grpo.beta'?"


def test_score_countdown_stdin_and_file(tmp_path):
    lines = [
        {"completion": "x</think>\n<answer>1 + 2 + 3</answer>", "nums": [1, 2, 3], "target": 6},
        {"completion": "x</think>\n<answer>1 + 2 + 3</answer>\n", "nums": [1, 2, 3], "target": 6},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n"
    r = invoke("score", "countdown", input=text)
    assert r.exit_code == 0, r.output
    out = [json.loads(x) for x in r.output.splitlines()]
    assert out[0]["scores"]["countdown_tinyzero"] == {"reward": 1.0, "reason": "correct"}
    assert out[1]["scores"]["countdown_tinyzero"]["reward"] == 0.0
    assert out[1]["scores"]["countdown_equation"]["reward"] == 1.0
    assert out[1]["scores"]["think_format"] == {"reward": 0.0, "reason": "text after </answer>"}
    (tmp_path / "c.jsonl").write_text(text)
    assert invoke("score", "countdown", "c.jsonl", "--out", "s.jsonl").exit_code == 0
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 2


def test_score_errors():
    r = invoke("score", "countdown", input="not json\n")
    assert r.exit_code == 2 and r.output.strip() == "error: line 1 is not JSON"
    r = invoke("score", "countdown", input='{"completion": "x"}\n')
    assert r.exit_code == 2 and "needs 'completion', 'nums' and 'target'" in r.output
    assert invoke("score", "countdown", "nope.jsonl").exit_code == 2
