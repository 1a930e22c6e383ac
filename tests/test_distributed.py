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


def _run(tmp: Path, model: Path, processes: int) -> Path:
    from test_pipeline import tiny_overrides  # the pipeline tests' tiny run

    sets = tiny_overrides(
        str(model),
        "grpo.rollout=trl",
        # every completion full length, so token counts compare across process counts
        'grpo.trl={"generation_kwargs": {"eos_token_id": null, "suppress_tokens": null}}',
    )
    cli = ["-m", "r1lite", "--quiet", "run", "countdown", "-p", "cpu", *[x for s in sets for x in ("--set", s)]]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command = (launcher if processes > 1 else [sys.executable]) + cli
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tmp.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp / "runs" / "countdown-cpu"


@pytest.mark.slow
def test_two_processes_run_one_run(tmp_path):
    """torchrun with 2 processes (gloo on CPU): one copy of each file, one metrics line per step, the same
    global batch as one process, and an adapter that loads."""
    from r1lite.train.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    one, two = _run(tmp_path / "one", model, 1), _run(tmp_path / "two", model, 2)
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


DDP_SCRIPT = """
import sys
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
from r1lite.train.models import load_model, load_tokenizer, lora_config, trainer_defaults
from r1lite.recipe.load import load_recipe

path = sys.argv[1]
recipe = load_recipe("countdown", "cpu", [f"model.name={path}"])
args = SFTConfig(output_dir="out", max_steps=1, save_strategy="no", **trainer_defaults(recipe, on_cuda=False))
trainer = SFTTrainer(
    model=load_model(path, recipe.model, recipe.quantization),
    args=args,
    train_dataset=Dataset.from_list([{"prompt": "Try 4 * 5", "completion": " = 20"}] * 4),
    processing_class=load_tokenizer(path),
    peft_config=lora_config(recipe.lora),
)
trainer.train()  # a backward through DDP: with find_unused_parameters=False an unused parameter would raise
wrapped = trainer.model_wrapped
print(f"{type(wrapped).__name__} find_unused_parameters={wrapped.find_unused_parameters}")
"""


@pytest.mark.slow
def test_the_ddp_wrapper_does_not_search_for_unused_parameters(tmp_path):
    """Two processes (gloo on CPU) train one LoRA step: DDP wraps the model without the unused-parameter search."""
    from r1lite.train.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "model")
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "ddp.py", str(model)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("DistributedDataParallel find_unused_parameters=False") == 2, done.stdout
