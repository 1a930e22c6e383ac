"""Reports, run listing, W&B offline files, plain output off a terminal, and cost arithmetic."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.cost import cost_for_run, price_for, run_cost
from r1lite.fileio import read_json, read_jsonl
from r1lite.recipes import load_recipe
from r1lite.report import series
from r1lite.tracking import Tracker, format_line

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished tiny run (W&B offline) shared by the tests below."""
    import os

    from r1lite.tiny import build_tiny_model

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


@pytest.mark.slow
def test_wandb_offline_files_in_run_dir(tiny_run):
    run_dir, _ = tiny_run
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline, "expected an offline W&B run under the run directory"
    assert any(p.suffix == ".wandb" for p in offline[0].rglob("*"))


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
    assert series(run_dir, "grpo", "search_rate")[0] == [1, 2, 3]  # behaviour curves, via weight-0 rewards
    final = read_json(run_dir / "eval/final.json")
    assert f"| accuracy | {read_json(run_dir / 'eval/base.json')['accuracy']:.1%} | {final['accuracy']:.1%} |" in md
    rows = [r for r in read_jsonl(run_dir / "grpo/metrics.jsonl") if "reward" in r]
    assert series(run_dir, "grpo", "reward") == ([r["step"] for r in rows], [r["reward"] for r in rows])
    assert series(run_dir, "grpo", "accuracy")[0] == [1, 2, 3]  # logged every step via a weight-0 reward
    assert "TinyZero reported" in md and "## Resolved recipe" in md


@pytest.mark.slow
def test_runs_list_and_compare(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    result = runner.invoke(app, ["runs", "list", "--root", str(run_dir.parent)])
    assert result.exit_code == 0 and "countdown-cpu" in result.output and "5/5" in result.output
    result = runner.invoke(app, ["runs", "compare", str(run_dir), str(run_dir), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not an r1lite run directory" in result.output


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


def test_doctor_names_fixes():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert "torch" in result.output and "offline model" in result.output and "W&B" in result.output
