"""Sweeps (r1lite.orchestrate.sweep): seeds that mean something, a grid of ordinary runs that shares its data and
warm-ups, reruns that skip and continue, SLURM through submitit's local executor, and statistics with known answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r1lite.analyze.sweep_report import build_sweep_report, collect, statistics_table
from r1lite.cli.main import app
from r1lite.errors import RecipeError
from r1lite.fileio import read_json, write_json, write_jsonl
from r1lite.orchestrate import sweep as sweep_module
from r1lite.orchestrate.sweep import Sweep, launch

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("sweep") / "m"))


def tiny_sets(tiny: str) -> list[str]:
    return [
        f"model.name={tiny}",
        "data.dir=data/sweep",
        "data.train_size=32",
        "data.test_size=8",
        "sft.examples=16",
        "sft.batch_size=8",
        "grpo.max_steps=2",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "grpo.micro_batch_size=4",
        "grpo.max_completion_length=12",
        "eval.examples=8",
        "eval.max_new_tokens=12",
        "tracking.wandb=disabled",
    ]


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------


def first_step(tiny: str, seed: int, backend: str) -> tuple[torch.Tensor, list, list]:
    """LoRA's initial weights, the first step's prompts and completions of a seeded GRPO trainer."""
    from r1lite.recipe.load import load_recipe
    from r1lite.stages import data
    from r1lite.stages.grpo import build_trainer

    sets = [*tiny_sets(tiny), "sft.enabled=false", f"seed={seed}", f"grpo.rollout={backend}"]
    recipe = load_recipe("countdown", "cpu", sets)
    data.run(recipe.data)
    trainer = build_trainer(recipe, Path(f"run-{seed}-{backend}"))
    lora = next(p for n, p in trainer.model.named_parameters() if "lora_A" in n).detach().clone()
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    out = trainer._generate_and_score_completions(batch)
    return lora, [b["prompt"] for b in batch], out["completion_ids"].tolist()


@pytest.mark.parametrize("backend", ["trl", "engine"])
def test_the_seed_reaches_lora_init_data_order_and_sampling(tiny, backend):
    one, again, other = (first_step(tiny, s, backend) for s in (1, 1, 2))
    assert torch.equal(one[0], again[0]) and one[1:] == again[1:]  # same seed: the same first step
    assert not torch.equal(one[0], other[0])  # LoRA initialisation
    assert one[1] != other[1]  # data order
    assert one[2] != other[2]  # rollout sampling


# ----------------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------------


def test_a_grid_of_configs_and_seeds_as_named_runs():
    s = Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-5,5e-5", "grpo.temperature=0.8"], 2, "g")
    assert [r.name for r in s.runs()] == [
        "learning_rate-1e-5_temperature-0.8-s42",
        "learning_rate-1e-5_temperature-0.8-s43",
        "learning_rate-5e-5_temperature-0.8-s42",
        "learning_rate-5e-5_temperature-0.8-s43",
    ]
    recipe = s.recipe_of(s.runs()[3])
    assert (recipe.grpo.learning_rate, recipe.seed, recipe.run_name) == (5e-5, 43, s.runs()[3].name)
    assert recipe.output_dir == str(Path("runs") / "g") and recipe.tracking.group == "g"
    with pytest.raises(RecipeError, match=r"did you mean 'grpo\.learning_rate'"):
        Sweep.from_args("countdown", "cpu", ["grpo.lr=1e-5,5e-5"], 1)
    with pytest.raises(RecipeError, match="needs the form key=value1,value2"):
        Sweep.from_args("countdown", "cpu", ["grpo.learning_rate"], 1)
    with pytest.raises(RecipeError, match=r"tracking\.push_to_hub would push every run of a sweep to the same"):
        Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-5,5e-5"], 2, sets=["tracking.push_to_hub=me/x"])


def test_the_shipped_sweep_files_resolve_and_the_dry_run_prices_them():
    root = Path(__file__).resolve().parent.parent / "recipes" / "sweeps"
    loss = Sweep.from_file(root / "loss-type.yaml")
    assert [c for c, _ in loss.configs()] == ["loss_type-grpo", "loss_type-dr_grpo", "loss_type-dapo"]
    assert len(loss.runs()) == 9
    result = runner.invoke(app, ["sweep", str(root / "loss-type.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "the whole sweep: 9 runs" in result.output and "$" in result.output
    too_big = runner.invoke(
        app, ["sweep", "countdown", "-p", "gpu-12gb", "--vary", "grpo.prompts_per_step=8,64", "--dry-run"]
    )
    assert too_big.exit_code == 2 and "prompts_per_step-64 will not fit" in too_big.output


# ----------------------------------------------------------------------------------------------
# Running: shared warm-ups, skipping, continuing, SLURM
# ----------------------------------------------------------------------------------------------


def _sweep(tiny: str, name: str) -> Sweep:
    return Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-4,1e-3"], 1, name, tiny_sets(tiny))


@pytest.mark.slow
def test_a_sweep_through_submitit_then_a_killed_local_sweep_ends_with_the_same_report(tiny):
    """Two learning rates of one seed (each run is a process start, the suite's dearest item): through submitit,
    then locally killed mid-sweep and run again; the grid over seeds is `test_a_grid_of_configs_and_seeds_...`."""
    pytest.importorskip("submitit")
    cloudpickle = pytest.importorskip("cloudpickle")
    # 1. submitit runs the runs as jobs: its debug executor in this process (its local executor only adds a process
    # start per job); what a SLURM job receives must pickle and come back whole
    slurm = _sweep(tiny, "by-jobs")
    job = cloudpickle.loads(cloudpickle.dumps((sweep_module.run_local, slurm, slurm.runs()[1])))
    assert job[1].runs() == slurm.runs() and job[2] == slurm.runs()[1]
    codes = launch(slurm, launcher="slurm", slurm={"cluster": "debug"})
    assert codes == {r.name: 0 for r in slurm.runs()}
    assert (slurm.root / "slurm").is_dir()
    # the seed's warm-up trained once, copied by the other learning rate
    reused = [read_json(slurm.root / r.name / "stages.json")["sft"].get("reused_from") for r in slurm.runs()]
    assert reused[0] is None and reused[1] is not None
    # 2. the same sweep locally, killed (with the run it was in) once its first run had finished, then run again
    local = _sweep(tiny, "by-processes")
    args = ["sweep", "countdown", "-p", "cpu", "--vary", "grpo.learning_rate=1e-4,1e-3", "--seeds", "1"]
    args += ["--name", "by-processes", *[x for s in tiny_sets(tiny) for x in ("--set", s)]]
    with Path("killed-sweep.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "r1lite", "--quiet", *args], start_new_session=True, stdout=log, stderr=log
        )
        while not (local.root / local.runs()[0].name / "summary.json").is_file():
            assert process.poll() is None, Path("killed-sweep.log").read_text()[-3000:]  # ended before the kill
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and the run it was in, without warning
        process.wait()
    assert not (local.root / local.runs()[1].name / "summary.json").is_file()
    again = runner.invoke(app, ["--quiet", *args])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier; skipped") == 1 and "2 of 2 runs finished" in again.output
    # 3. a rerun skips every run without starting any
    started = time.monotonic()
    rerun = runner.invoke(app, ["--quiet", *args])
    assert rerun.output.count("finished earlier; skipped") == 2 and time.monotonic() - started < 30
    # the same runs, however they were launched and interrupted: the same statistics
    tables = [statistics_table(collect(s.root)[1]) for s in (slurm, local)]
    assert tables[0] == tables[1] and "learning_rate-1e-3" in tables[0][3]
    report = runner.invoke(app, ["sweep", "report", str(local.root)])
    assert report.exit_code == 0 and (local.root / "report.html").is_file()
    assert "learning_rate-1e-3" in (local.root / "report.md").read_text()


# ----------------------------------------------------------------------------------------------
# Statistics on results with a known answer
# ----------------------------------------------------------------------------------------------


def fake_sweep(root: Path, accuracies: dict[str, list[float]], problems: int = 256) -> None:
    """A finished sweep whose runs got exactly these accuracies on the same problems (the first ones right)."""
    runs = {}
    for config, per_seed in accuracies.items():
        for seed, acc in enumerate(per_seed):
            name = f"{config}-s{seed}"
            runs[name] = {"config": config, "seed": seed, "set": []}
            right = round(acc * problems)
            rows = [{"nums": [i], "target": i, "correct": i < right} for i in range(problems)]
            write_jsonl(root / name / "eval/final.jsonl", rows)
            final = {"accuracy": right / problems, "format_rate": 1.0, "mean_length": 60.0}
            cost = {"total": {"seconds": 60.0, "usd": 0.0}}
            write_json(root / name / "summary.json", {"final": final, "cost": cost})
    manifest = {"name": root.name, "recipe": "countdown", "profile": "cpu", "vary": {"x": list(accuracies)}}
    write_json(root / "sweep.json", {**manifest, "seeds": [0, 1], "set": [], "configs": list(accuracies), "runs": runs})


def test_the_report_finds_a_built_in_difference_and_not_a_null_one(tmp_path):
    fake_sweep(tmp_path / "s", {"base": [0.15, 0.17], "better": [0.27, 0.29], "same": [0.17, 0.15]})
    lines = statistics_table(collect(tmp_path / "s")[1])
    text = "\n".join(lines)
    better = next(line for line in lines if line.startswith("| better |"))
    same = next(line for line in lines if line.startswith("| same |"))
    assert "+11.9 pt" in better and better.rstrip(" |").split("|")[4].strip().endswith("*")  # excludes zero
    assert "+0.0 pt" in same and "*" not in same.split("|")[4]
    assert "| base | 2 | 16.0% [" in text
    assert "The smallest difference this sweep could detect (256 problems per config, each scored by 2 seed(s)" in text
    path = build_sweep_report(tmp_path / "s")
    assert path.is_file() and "better" in path.with_suffix(".md").read_text()


def test_runs_compare_with_several_seeds_a_side(tmp_path):
    fake_sweep(tmp_path / "s", {"base": [0.15, 0.17], "better": [0.27, 0.29]})
    for run in (tmp_path / "s").glob("*-s*"):
        (run / "config.yaml").write_text("name: x\n")
        (run / "eval/final.json").write_text(json.dumps(read_json(run / "summary.json")["final"]))
    result = runner.invoke(app, ["runs", "compare", f"{tmp_path}/s/base-s*", f"{tmp_path}/s/better-s*"])
    assert result.exit_code == 0, result.output
    assert "base-s0 +1" in result.output and "(mean over runs)" in result.output
    assert "+11.9 pt" in result.output and "paired over 256 problems: above zero" in result.output
