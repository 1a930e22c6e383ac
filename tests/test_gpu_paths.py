"""Code paths that only run under CUDA, modelled on CPU: which GPU a process uses, when the process group
opens and with what timeout, precision on cards without bf16, when a captured decode step is trusted, and
the GRPOConfig a recipe builds. Each test here failed with its defect put back (see the closing note of
issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.errors import R1liteError, RecipeError
from r1lite.plan.hardware import Hardware
from r1lite.recipe.load import load_recipe

runner = CliRunner()
T4 = Hardware(True, "Tesla T4", 14.7, 14.5, bf16=False, capability=(7, 5))
RTX_4080 = Hardware(True, "NVIDIA GeForce RTX 4080", 15.6, 15.2, bf16=True, capability=(8, 9))


class Stop(Exception):
    """Raised by a stand-in once it has seen what the test needs."""


@pytest.fixture(autouse=True)
def _libraries_imported():
    """Import TRL before a test pretends CUDA is present (its import checks would see the pretence)."""
    import trl  # noqa: F401
    from trl import GRPOConfig, SFTConfig  # noqa: F401


# ----------------------------------------------------------------------------------------------
# --gpus N: each process on its own GPU, from its first CUDA call
# ----------------------------------------------------------------------------------------------


def test_each_process_loads_its_4bit_model_onto_its_own_gpu(monkeypatch):
    """accelerate refuses to train a 4-bit model placed on another device: rank 1 must load onto cuda:1."""
    from transformers import AutoModelForCausalLM

    from r1lite.recipe.config import ModelConfig, QuantizationConfig
    from r1lite.train import models

    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(models, "pick_device", lambda cfg: "cuda")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(Stop):
        models.load_model("m", ModelConfig(name="m"), QuantizationConfig(mode="nf4"))
    assert seen["device_map"] == {"": "cuda:1"}


def test_the_gpu_is_pinned_before_the_first_cuda_call_and_the_group_opens_with_the_timeout(monkeypatch):
    """Rank 1 of 2: set_device(1) comes before the hardware probe (the first CUDA call), and r1lite opens the
    process group itself, with the recipe's timeout, before any stage runs."""
    from r1lite.machine import distributed
    from r1lite.plan import hardware
    from r1lite.stages import evaluate as evaluate_stage

    events: list[str] = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: events.append(f"set_device {i}"))

    def probe():
        events.append("probe")
        return RTX_4080

    monkeypatch.setattr(hardware, "probe", probe)
    monkeypatch.setattr(hardware, "detected_card", lambda vram_gib=None: (probe(), hardware.card_by_name("16"))[1])
    monkeypatch.setattr(distributed, "start", lambda minutes: events.append(f"start {minutes:g}"))
    monkeypatch.setattr(distributed, "wait_for_everyone", lambda: None)
    monkeypatch.setattr(evaluate_stage, "run", lambda *a, **k: events.append("eval") or {})
    sets = ["data.train_size=8", "data.test_size=4", "data.dir=data/t", "distributed.timeout_minutes=90"]
    result = runner.invoke(
        app, ["--quiet", "eval", "countdown", "-p", "gpu-16gb", *[x for s in sets for x in ("--set", s)]]
    )
    assert result.exit_code == 0, result.output
    assert events[0] == "set_device 1" and "probe" in events
    assert events.index("start 90") < events.index("eval")


def test_the_process_group_gets_the_timeout(monkeypatch):
    """The first PartialState creates the group; its timeout is final (NCCL's default is 10 minutes)."""
    from datetime import timedelta

    from accelerate import PartialState

    from r1lite.machine import distributed

    seen = {}

    def init_process_group(**kwargs):
        seen.update(kwargs)
        raise Stop

    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    PartialState._reset_state()
    try:
        with pytest.raises(Stop):
            distributed.start(90)
    finally:
        PartialState._reset_state()
    assert seen["timeout"] == timedelta(minutes=90)


def test_evals_are_split_over_the_processes_in_order(monkeypatch):
    from r1lite.machine import distributed

    items = list(range(10))
    monkeypatch.setenv("WORLD_SIZE", "3")
    shares = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        shares.append(distributed.shard(items))
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert distributed.shard(items) == items and distributed.gather(items) == items


# ----------------------------------------------------------------------------------------------
# Cards without bf16 (T4, V100): decided before any model loads
# ----------------------------------------------------------------------------------------------


def test_no_bf16_card_trains_in_fp16(monkeypatch):
    from r1lite.machine.precision import fit_precision
    from r1lite.train.models import trainer_defaults

    recipe = load_recipe("countdown", "gpu-16gb")
    fitted = fit_precision(recipe, T4)
    assert (fitted.model.dtype, fitted.quantization.compute_dtype) == ("float16", "float16")
    args = trainer_defaults(fitted, on_cuda=True)
    assert args["fp16"] is True and args["bf16"] is False
    assert fit_precision(recipe, RTX_4080) is recipe
    with pytest.raises(
        RecipeError, match=r"model\.dtype=bfloat16 but Tesla T4 \(compute capability 7\.5\) has no bf16"
    ):
        fit_precision(load_recipe("countdown", "gpu-16gb", ["model.dtype=bfloat16"]), T4)


def test_a_t4_run_is_set_to_fp16_before_the_base_eval(monkeypatch):
    """`r1lite run` on a T4 prepares an fp16 recipe before any stage (TrainingArguments would refuse bf16 later)."""
    from r1lite.orchestrate import pipeline
    from r1lite.plan import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "probe", lambda: T4)
    monkeypatch.setattr(hardware, "detected_card", lambda vram_gib=None: hardware.Card("Tesla T4", 14.7))
    seen, prepare = {}, pipeline.prepare

    def prepared(recipe, auto_fit=False):
        seen["recipe"] = prepare(recipe, auto_fit)
        raise Stop

    monkeypatch.setattr(pipeline, "prepare", prepared)
    result = runner.invoke(app, ["run", "countdown", "-p", "gpu-16gb"])
    assert isinstance(result.exception, Stop), result.output
    assert seen["recipe"].model.dtype == "float16" and seen["recipe"].quantization.compute_dtype == "float16"


# ----------------------------------------------------------------------------------------------
# Captured decode steps: trusted only after they match eager decoding
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    # large weights: the next token depends on the whole context, so a cache missing a token changes the output
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", hidden=64, layers=2, init_std=0.5))


def _engine(tiny: str, backend, merge: str = "unmerged"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1lite.train.rollout.engine import RolloutEngine, RolloutSettings

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny)
    settings = RolloutSettings(max_new_tokens=12, greedy=True, merge=merge, compile_backend=backend)
    prompts = [p for p in tok(text=["Using the numbers [3, 5, 2]", "Try 4 * 5 = 20"])["input_ids"] for _ in range(2)]
    return RolloutEngine(model, tok, settings), prompts


def _eager(tiny: str, merge: str = "unmerged"):
    engine, prompts = _engine(tiny, None, merge)
    return engine.generate(prompts, 2)


def _write_positions(engine) -> set[int]:
    return {int(layer.cumulative_length) for state in engine._states.values() for layer in state.cache.layers}


def garbage_backend(gm, _inputs):
    """A 'compiler' whose graph runs but returns wrong logits: replaying stale buffers looks like this."""
    return lambda *args: [out * -1.0 for out in gm.forward(*args)]


def failing_backend(gm, _inputs):
    def run(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    return run


@pytest.mark.parametrize("backend", [garbage_backend, failing_backend])
def test_a_capture_that_fails_or_disagrees_falls_back_to_eager_with_one_line(tiny, backend, monkeypatch):
    from r1lite import ui

    lines = []
    monkeypatch.setattr(ui, "log", lines.append)
    torch._dynamo.reset()
    engine, prompts = _engine(tiny, backend)
    out = engine.generate(prompts, 2)
    eager, eager_engine = _eager(tiny), _engine(tiny, None)[0]
    eager_engine.generate(prompts, 2)
    assert out.completion_ids == eager.completion_ids  # the rollout itself is unaffected: the cache is eager's
    torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(eager.logprobs))
    assert _write_positions(engine) == _write_positions(eager_engine)  # no token written twice or skipped
    assert out.stats["compiled"] is False and engine.compile_failed
    assert len(lines) == 1 and "decoding eagerly from now on" in lines[0]
    engine.generate(prompts, 2)
    assert len(lines) == 1  # said once


def test_a_capture_that_agrees_is_trusted(tiny):
    torch._dynamo.reset()
    engine, prompts = _engine(tiny, "aot_eager", merge="merged")
    out = engine.generate(prompts, 2)
    assert out.stats["compiled"] and not engine.compile_failed
    assert out.completion_ids == _eager(tiny, merge="merged").completion_ids


def test_auto_compiles_only_the_paths_a_gpu_has_proven(monkeypatch):
    from r1lite.plan import memory as plan

    for merged in (True, False):
        assert plan.compiles("auto", merged, on_cuda=True) is False  # nothing measured on a GPU yet
        assert plan.compiles(True, merged, on_cuda=True) is True
        assert plan.compiles(True, merged, on_cuda=False) is False
    monkeypatch.setitem(plan.COMPILE_PROVEN, "merged", True)
    assert plan.compiles("auto", True, on_cuda=True) and not plan.compiles("auto", False, on_cuda=True)
    recipe = load_recipe("countdown", "gpu-24gb")
    assert recipe.grpo.rollout_compile == "auto"
    assert load_recipe("countdown", "gpu-24gb", ["grpo.rollout_compile=false"]).grpo.rollout_compile is False


def test_a_cuda_error_left_by_a_capture_stops_with_the_setting(monkeypatch):
    from r1lite.train.rollout.capture import synchronize as _synchronize

    def broken(device=None):
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "synchronize", broken)
    with pytest.raises(R1liteError, match=r"--set grpo\.rollout_compile=false"):
        _synchronize(torch.device("cuda"))


# ----------------------------------------------------------------------------------------------
# Dr. GRPO as published
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "loss", "scaling"),
    [
        ([], "dr_grpo", "none"),  # the recipes' loss: no division by the group's reward std
        (["grpo.loss_type=grpo"], "grpo", "group"),
        (["grpo.loss_type=dapo"], "dapo", "group"),
        (["grpo.scale_rewards=batch"], "dr_grpo", "batch"),
    ],
)
def test_the_grpo_config_a_recipe_builds(sets, loss, scaling):
    from r1lite.stages.grpo import trainer_args

    recipe = load_recipe("countdown", "gpu-16gb", sets)
    args = trainer_args(recipe, Path("out"), on_cuda=False, backend="engine")
    assert (args.loss_type, args.scale_rewards) == (loss, scaling)
    assert (args.beta, args.num_generations, args.max_completion_length) == (0.0, 8, 512)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 64  # 8 prompts x 8
