"""Several processes, one run: global batches that do not change with N, one writer, a launch command,
the accelerate/DeepSpeed configs and the vLLM settings (vLLM and DeepSpeed themselves do not run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.errors import RecipeError
from r1lite.fileio import read_jsonl
from r1lite.machine.distributed import CONFIGS, split_batch
from r1lite.recipe.config import check_backends
from r1lite.recipe.load import load_recipe

runner = CliRunner()


def test_batches_stay_global_whatever_the_process_count():
    assert split_batch(64, 8, 1) == (8, 8)
    assert split_batch(64, 8, 4) == (8, 2)  # 8 x 2 x 4 = 64 per optimizer step
    assert split_batch(4, 4, 2) == (2, 1)  # too few for a full micro-batch each: smaller micro-batches
    with pytest.raises(RecipeError, match=r"do not split over 3 processes.*use --gpus 2 or --gpus 4"):
        split_batch(64, 8, 3)


def test_dry_run_prints_the_accelerate_command_and_the_split():
    result = runner.invoke(app, ["run", "countdown", "-p", "gpu-24gb", "--gpus", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"accelerate launch --config_file {CONFIGS / 'ddp.yaml'} --num_processes 2 -m r1lite" in result.output
    assert "run countdown --profile gpu-24gb" in result.output
    assert "GRPO 4 completions x 16 accumulation steps (128 per optimizer step over 2 processes)" in result.output
    zero = runner.invoke(
        app,
        ["run", "countdown", "-p", "gpu-80gb", "--gpus", "4", "--dry-run", "--set", "distributed.strategy=zero3"],
    )
    assert zero.exit_code == 0 and "zero3.yaml --num_processes 4" in zero.output
    bad = runner.invoke(app, ["run", "countdown", "-p", "gpu-16gb", "--gpus", "3", "--dry-run"])
    assert bad.exit_code == 2 and "use --gpus 2 or --gpus 4" in bad.output


def test_a_launch_gives_the_workers_time_to_checkpoint(monkeypatch):
    """`--gpus N` execs `accelerate launch` with TORCH_ELASTIC_SHUTDOWN_TIMEOUT at 15 minutes: torch elastic's 30 s
    default would kill a worker that a forwarded SIGTERM asked to finish its step and write a checkpoint."""
    import os

    launched = {}

    def execv(path, args):
        launched.update(path=path, args=args, timeout=os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT"))
        raise SystemExit(0)

    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    monkeypatch.setattr(os, "execv", execv)
    result = runner.invoke(app, ["run", "countdown", "-p", "gpu-24gb", "--gpus", "2"])
    assert result.exit_code == 0, result.output
    assert launched["timeout"] == "900" and launched["path"].endswith("accelerate")
    assert launched["args"][1:3] == ["launch", "--config_file"] and "--num_processes" in launched["args"]
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "60")  # a user's own value stays
    runner.invoke(app, ["run", "countdown", "-p", "gpu-24gb", "--gpus", "2"])
    assert launched["timeout"] == "60"


@pytest.mark.parametrize(
    ("name", "kind", "stage"), [("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)]
)
def test_shipped_accelerate_configs_load(name, kind, stage):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind
    if stage is not None:
        assert config.deepspeed_config["zero_stage"] == stage
        assert config.deepspeed_config["gradient_accumulation_steps"] == "auto"  # from TRL's arguments


def test_backends_are_checked_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(RecipeError, match="pip install vllm"):
        check_backends(load_recipe("countdown", "gpu-24gb", ["grpo.rollout=vllm"]))
    with pytest.raises(RecipeError, match="cannot shard a bitsandbytes nf4 policy"):
        check_backends(load_recipe("countdown", "gpu-24gb", ["distributed.strategy=zero3"]))
    check_backends(load_recipe("countdown", "gpu-80gb", ["distributed.strategy=zero3"]))  # bf16 policy: fine


def test_vllm_mode_reaches_trl():
    from r1lite.stages.grpo import trainer_args

    recipe = load_recipe("countdown", "cpu", ["grpo.rollout=vllm", "grpo.vllm_mode=server"])
    args = trainer_args(recipe, Path("out"), on_cuda=False, backend="vllm")
    assert args.use_vllm and args.vllm_mode == "server"


# Loaded by every process the two-process run starts (PYTHONPATH): each DDP wrapper says how it was built
DDP_PROBE = """
import torch.nn.parallel as parallel

_init = parallel.DistributedDataParallel.__init__


def _init_and_say(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    print(f"DistributedDataParallel find_unused_parameters={self.find_unused_parameters}", flush=True)


parallel.DistributedDataParallel.__init__ = _init_and_say
"""


def _sets(model: Path) -> list[str]:
    from test_pipeline import tiny_overrides  # the pipeline tests' tiny run

    return tiny_overrides(
        str(model),
        "grpo.rollout=trl",
        # every completion full length, so token counts compare across process counts
        'grpo.trl={"generation_kwargs": {"eos_token_id": null, "suppress_tokens": null}}',
    )


@pytest.mark.slow
def test_two_processes_run_one_run(tmp_path, monkeypatch):
    """torchrun with 2 processes (gloo on CPU): one copy of each file, one metrics line per step, the same
    global batch as one process (run here, in this process), an adapter that loads, and every DDP wrapper built
    without the unused-parameter search (a backward through DDP then raises if a parameter got no gradient)."""
    from r1lite.train.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    cli = ["-m", "r1lite", "--quiet", "run", "countdown", "-p", "cpu", *[x for s in _sets(model) for x in ("--set", s)]]
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "sitecustomize.py").write_text(DDP_PROBE)
    pythonpath = os.pathsep.join([str(tmp_path / "probe"), *sys.path])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    (two := tmp_path / "two").mkdir()
    done = subprocess.run(launcher + cli, cwd=two, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("DistributedDataParallel find_unused_parameters=False") == 4, done.stdout  # SFT, GRPO
    assert "find_unused_parameters=True" not in done.stdout
    (one := tmp_path / "one").mkdir()
    monkeypatch.chdir(one)  # the same run in one process
    alone = runner.invoke(app, cli[2:])
    assert alone.exit_code == 0, alone.output
    one, two = one / "runs/countdown-cpu", two / "runs/countdown-cpu"
    grpo_one = [r for r in read_jsonl(one / "grpo/metrics.jsonl") if "loss" in r]
    grpo_two = [r for r in read_jsonl(two / "grpo/metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in grpo_two] == [1, 2]  # written once, by the main process
    assert [r["num_tokens"] for r in grpo_two] == [r["num_tokens"] for r in grpo_one]
    assert len([r for r in read_jsonl(two / "sft/metrics.jsonl") if "loss" in r]) == len(
        [r for r in read_jsonl(one / "sft/metrics.jsonl") if "loss" in r]
    )
    stages = json.loads((two / "stages.json").read_text())
    assert set(stages) == {"data", "eval_base", "sft", "eval_warmup", "grpo", "eval_final"}
    final = json.loads((two / "eval/final.json").read_text())
    assert final["examples"] == 4 and final["processes"] == 2  # each process evaluated its share
    rows_one, rows_two = read_jsonl(one / "eval/final.jsonl"), read_jsonl(two / "eval/final.jsonl")
    assert [(r["nums"], r["target"]) for r in rows_two] == [(r["nums"], r["target"]) for r in rows_one]  # in order

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(two / "grpo/adapter"))


def test_trainers_skip_ddp_unused_parameter_search(tmp_path):
    """For a PEFT model (not a PreTrainedModel) the HF Trainer's default is find_unused_parameters=True under
    `--gpus N`: a walk of the autograd graph after every backward. Every LoRA parameter gets a gradient, so r1lite
    turns it off in the arguments every stage builds."""
    from trl import SFTConfig

    from r1lite.stages.grpo import trainer_args
    from r1lite.train.models import trainer_defaults

    recipe = load_recipe("countdown", "gpu-24gb")
    grpo = trainer_args(recipe, tmp_path, on_cuda=False, backend="engine")
    sft = SFTConfig(output_dir=str(tmp_path / "sft"), **trainer_defaults(recipe, on_cuda=False))
    assert grpo.ddp_find_unused_parameters is False and sft.ddp_find_unused_parameters is False
