"""`r1lite plan`: the memory model against measurements (H200 stock TRL, CPU tiny models), the profiles
against their cards, and the refusal / --auto-fit paths of the training commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.errors import R1liteError
from r1lite.plan.hardware import CARDS, Card, card_by_name, card_for_profile
from r1lite.plan.memory import CUDA_CONTEXT_GIB, GIB, HEADROOM
from r1lite.plan.planner import auto_fit, make_plan, shape_for, stage_peak_gib
from r1lite.recipe.load import load_recipe, profiles_of

runner = CliRunner()
# measured on an H200 (2026-11-28); a copy of ../shared/calibration/h200-stock-trl-grpo.json, so the test
# runs wherever the repository does
CALIBRATION = Path(__file__).resolve().parent / "data" / "h200-stock-trl-grpo.json"


def calibration_runs() -> list[dict]:
    return [r for r in json.loads(CALIBRATION.read_text())["runs"] if "continuous" not in r["generation"]]


def calibration_recipe(run: dict):
    """The calibration's configuration as a recipe: Qwen2.5-3B, LoRA r16, 8 x 8 x 256, one micro-batch."""
    mode = "nf4" if run["policy"].startswith("NF4") else "none"
    return load_recipe(
        "countdown",
        None,
        [
            "model.name=Qwen/Qwen2.5-3B",
            f"quantization.mode={mode}",
            "lora.r=16",
            "lora.alpha=32",
            "grpo.prompts_per_step=8",
            "grpo.num_generations=8",
            "grpo.micro_batch_size=64",
            "grpo.max_completion_length=256",
            "grpo.eval_every=0",
            "sft.enabled=false",
        ],
    )


def test_plan_predicts_stock_trl_peaks_measured_on_an_h200():
    """Told the calibration's configuration, the plan's tensor peak is within 15 % of max_memory_allocated."""
    runs = calibration_runs()
    assert len(runs) == 3
    for run in runs:
        plan = make_plan(calibration_recipe(run), card_by_name("H200"), stock_trl=True, prompt_tokens=40)
        predicted = max(s.tensor_bytes for s in plan.stages.values() if s is not plan.stages["eval"]) / GIB
        assert predicted == pytest.approx(run["peak_gib"], rel=0.15), run
        assert plan.stages["grpo_train"].parts["weights"] / GIB == pytest.approx(run["load_gib"], rel=0.15)


def _step_errors() -> list[float]:
    """The plan's step time over the measured steady one (the mean after the first step), per calibration run."""
    errors = []
    for run in calibration_runs():
        plan = make_plan(calibration_recipe(run), card_by_name("H200"), stock_trl=True, prompt_tokens=40)
        steady = sum(run["step_s"][1:]) / len(run["step_s"][1:])
        errors.append(plan.step_seconds / steady - 1)
    return errors


def test_the_decode_model_reproduces_the_h200_stock_trl_step_times(monkeypatch):
    """Decode from physics (bytes over bandwidth, FLOPs over throughput, the host's launches when eager), its
    calibrated constant fitted to these runs: every step time within 20 %, and not with that constant off by 2x."""
    from dataclasses import replace

    from r1lite.plan import timing

    assert all(abs(e) <= 0.20 for e in _step_errors()), _step_errors()
    for factor in (0.5, 2.0):
        monkeypatch.setattr(timing, "HOST_OP_US", replace(timing.HOST_OP_US, value=29.5 * factor))
        assert any(abs(e) > 0.20 for e in _step_errors()), (factor, _step_errors())


@pytest.mark.slow
def test_plan_predicts_a_cpu_grpo_step_of_a_tiny_model(tmp_path):
    """The same model predicts a CPU run: the GRPO training step's peak tensor bytes, measured, within 20 %."""
    from r1lite.stages import data
    from r1lite.stages.grpo import build_trainer
    from r1lite.train.memtrack import PeakTensorBytes
    from r1lite.train.rollout.registry import engine_tensors
    from r1lite.train.tiny import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "m", hidden=256, layers=4)
    recipe = load_recipe(
        "countdown",
        "cpu",
        [
            f"model.name={model_dir}",
            "data.dir=data/t",
            "data.train_size=16",
            "data.test_size=2",
            "grpo.prompts_per_step=2",
            "grpo.num_generations=4",
            "grpo.micro_batch_size=8",
            "grpo.max_completion_length=64",
            "grpo.eval_every=0",
            'grpo.trl={"generation_kwargs": {"eos_token_id": null, "suppress_tokens": null}}',
            "tracking.wandb=disabled",
        ],
    )
    data.run(recipe.data)
    trainer = build_trainer(recipe, tmp_path / "run")
    trainer.create_optimizer()
    batch = [trainer.train_dataset[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]
    trainer.model.train()
    inputs = trainer._generate_and_score_completions(batch)
    trainer.current_gradient_accumulation_steps = 1

    def step() -> None:
        trainer.compute_loss(trainer.model, inputs).backward()
        trainer.optimizer.step()

    step()  # the optimizer's state exists from the second step on
    held = engine_tensors(trainer.accelerator.unwrap_model(trainer.model))  # the rollout engine's copy and cache
    assert held, "the cpu profile rolls out with the engine"
    with PeakTensorBytes(trainer.model, trainer.optimizer, *held) as measured:
        step()
    assert inputs["completion_ids"].shape[1] == 64 and trainer.args.bf16 is False
    plan = make_plan(recipe, prompt_tokens=inputs["prompt_ids"].shape[1])
    predicted = plan.stages["grpo_train"].tensor_bytes
    print(f"\nplan {predicted / 2**20:.1f} MiB, measured {measured.peak / 2**20:.1f} MiB")
    assert predicted == pytest.approx(measured.peak, rel=0.20), (predicted / 2**20, measured.peak / 2**20)


@pytest.mark.parametrize(
    ("recipe", "profile"),
    [(r, p) for r in ("countdown", "knights_knaves") for p in profiles_of(r) if p.startswith("gpu-")],
)
def test_every_gpu_profile_fits_its_card_with_headroom(recipe, profile):
    plan = make_plan(load_recipe(recipe, profile, []), card_for_profile(profile))
    assert plan.fits(headroom=HEADROOM), (recipe, profile, plan.peak_gib, plan.card)


def test_another_tasks_prompt_length_is_estimated_from_its_prompts():
    from r1lite.plan.planner import prompt_tokens_for

    assert prompt_tokens_for(load_recipe("countdown")) == 160
    three = prompt_tokens_for(load_recipe("knights_knaves", "gpu-16gb"))
    six = prompt_tokens_for(load_recipe("knights_knaves", "gpu-16gb", ["data.knights_knaves.n_people=6"]))
    assert 150 < three < six  # a 3-person puzzle in the ChatML template is ~200 tokens; more people, more text


def test_plan_json_answers_offline_with_every_field(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    fields = {"model", "profile", "card_gib", "peak_gib", "fits", "stages", "step_seconds", "run_hours", "usd"}
    assert fields <= set(out)
    assert out["model"] == "Qwen/Qwen3-1.7B-Base" and out["fits"] is True and out["card_gib"] == pytest.approx(15.6)
    for stage in ("eval", "sft_step", "grpo_rollout", "grpo_train", "grpo_periodic_eval"):
        assert out["stages"][stage]["peak_gib"] > 0 and out["stages"][stage]["parts"]
    assert out["peak_gib"] == max(s["peak_gib"] for s in out["stages"].values())
    assert out["step_seconds"] > 0 and out["run_hours"] > 0
    assert set(out["cards"]) == {c.name for c in CARDS} and out["cards"]["H200"] is True  # a verdict for every card


def test_plan_text_and_card_options():
    result = runner.invoke(app, ["plan", "countdown", "-p", "gpu-24gb", "--gpu", "8"])
    assert result.exit_code == 0, result.output
    assert "does NOT fit" in result.output and "grpo_train" in result.output
    result = runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb", "--vram", "40", "--json"])
    assert json.loads(result.output)["card_gib"] == 40
    bad = runner.invoke(app, ["plan", "countdown", "--gpu", "9000"])
    assert bad.exit_code == 2 and "unknown GPU '9000'" in bad.output


def test_shapes_from_a_local_config_and_a_clear_error_for_unknown_models(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps(
            dict(
                model_type="llama",
                vocab_size=1000,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
            )
        )
    )
    shape = shape_for(str(tmp_path))
    assert (shape.hidden, shape.kv_heads, shape.qkv_bias) == (64, 2, False)
    assert shape.params == 1000 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64
    assert shape_for("Qwen/Qwen2.5-3B-Instruct") == shape_for("Qwen/Qwen2.5-3B")
    assert shape_for("Qwen/Qwen2.5-3B").params == pytest.approx(3.09e9, rel=0.01)  # the published 3.09B
    with pytest.raises(R1liteError, match="does not know the shape of 'someone/else'"):
        shape_for("someone/else")


def test_an_out_of_memory_fix_shrinks_the_stage_that_ran_out_on_the_real_card(tmp_path, monkeypatch):
    """GRPO ran out on a 16 GB card: the settings saved for --auto-fit take 15 % off GRPO's planned peak as the run
    will plan it, on that card. Planned on a smaller imaginary card instead, the merge decision flips there by itself
    and the fix asks only for a smaller micro-batch, which leaves the merged rollout on the real card above it."""
    from r1lite.plan import hardware
    from r1lite.runs import failures

    recipe, card = load_recipe("countdown", "gpu-16gb"), card_by_name("RTX 4060 Ti")
    monkeypatch.setattr(hardware, "detected_card", lambda vram_gib=None: card)
    failures.out_of_memory(recipe, "grpo", tmp_path)
    fix = json.loads((tmp_path / "oom.json").read_text())["settings"]
    fitted = load_recipe("countdown", "gpu-16gb", [f"{k}={v}" for k, v in fix.items()])
    before, after = make_plan(recipe, card, verdicts=False), make_plan(fitted, card, verdicts=False)
    assert stage_peak_gib(after, "grpo") <= 0.85 * stage_peak_gib(before, "grpo"), fix
    assert set(fix) <= {"grpo.micro_batch_size", "grpo.rollout_merge"}  # GRPO's knobs only: the eval was not at fault


def test_auto_fit_changes_only_memory_knobs_and_fits_with_headroom():
    recipe = load_recipe("countdown", "gpu-24gb-qwen2.5-3b", ["grpo.micro_batch_size=32"])
    card = card_by_name("16")
    assert not make_plan(recipe, card).fits()
    fitted, changes = auto_fit(recipe, card)
    assert changes and set(changes) <= {
        "grpo.micro_batch_size",
        "grpo.rollout_merge",
        "eval.batch_size",
        "sft.batch_size",
        "sft.grad_accum",
    }
    assert make_plan(fitted, card).fits(headroom=HEADROOM)
    assert fitted.grpo.prompts_per_step == recipe.grpo.prompts_per_step
    assert fitted.grpo.max_completion_length == recipe.grpo.max_completion_length
    with pytest.raises(R1liteError, match=r"lower grpo\.max_completion_length"):
        auto_fit(recipe, Card("tiny card", 2.0))


def fake_card(monkeypatch, gib: float) -> None:
    from r1lite.plan import hardware

    monkeypatch.setattr(hardware, "detected_card", lambda vram_gib=None: Card(f"test card {gib} GiB", gib))


def test_a_run_that_cannot_fit_is_refused_before_any_model_loads(monkeypatch, tmp_path):
    from r1lite.train import models

    fake_card(monkeypatch, 15.6)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    big = ["--set", "grpo.micro_batch_size=32"]
    result = runner.invoke(app, ["run", "countdown", "-p", "gpu-24gb-qwen2.5-3b", *big])
    assert result.exit_code == 2
    assert "needs ~" in result.output and "--set grpo.micro_batch_size=" in result.output
    assert "--auto-fit" in result.output
    assert not (tmp_path / "runs").exists()
    # --auto-fit makes it fit; the run then stops only because this machine has no CUDA
    result = runner.invoke(app, ["--quiet", "grpo", "countdown", "-p", "gpu-24gb-qwen2.5-3b", *big, "--auto-fit"])
    assert "--auto-fit for test card" in result.output and "grpo.micro_batch_size=" in result.output
    assert "needs ~" not in result.output


def test_engine_reserve_is_the_plans_optimizer_state():
    """The rollout engine keeps free, beside its buffers, what the plan's GRPO step keeps beside a loaded policy
    through the step: the adapter's gradients and Adam moments, not training's activations (time-shared)."""
    from r1lite.plan.memory import lora_bytes
    from r1lite.plan.shapes import Shape
    from r1lite.stages.grpo_rollout import settings_from_recipe
    from r1lite.train.rollout.engine import RolloutEngine
    from r1lite.train.tiny import build_tokenizer

    recipe = load_recipe("countdown", "gpu-12gb")
    model = _meta_policy(recipe)
    engine = RolloutEngine(model, build_tokenizer(), settings_from_recipe(recipe))
    parts = make_plan(recipe, card_for_profile("gpu-12gb"), verdicts=False).stages["grpo_train"].parts
    trainable = shape_for(recipe.model.name).lora_params(recipe.lora.r, recipe.lora.target_modules)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert engine.reserve() == parts["lora_and_adam"] - lora_bytes(trainable, training=False)
    config = model.get_base_model().config
    assert Shape.from_config(config, source=_QWEN_SOURCE) == shape_for(recipe.model.name)  # the shape round-trips


_QWEN_SOURCE = shape_for("Qwen/Qwen2.5-3B").source


def _meta_policy(recipe):
    """The recipe's model shape and architecture with its LoRA, on the meta device: the sizes the engine counts,
    no memory."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    s = shape_for(recipe.model.name)
    config = (Qwen3Config if "qwen3" in recipe.model.name.lower() else Qwen2Config)(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        intermediate_size=s.intermediate,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        tie_word_embeddings=s.tied,
        **({"head_dim": s.head_dim} if s.head_dim else {}),  # Qwen3's; Qwen2's follows from hidden / heads
    )
    lora = recipe.lora
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules))


@pytest.mark.parametrize(
    ("recipe", "profile"),
    [(r, p) for r in ("countdown", "knights_knaves") for p in profiles_of(r) if p.startswith("gpu-")],
)
def test_plan_and_engine_take_the_same_merge_decision_on_every_card(recipe, profile):
    """One rule (`rollout_fits`), the same bytes: given the free memory the plan assumes, the engine decides as the
    plan does, for the GRPO rollout (beside the training step) and for an eval stage (nothing beside it)."""
    import torch

    from r1lite.plan.hardware import CARDS
    from r1lite.plan.memory import GIB
    from r1lite.plan.planner import prompt_tokens_for
    from r1lite.stages.grpo_rollout import settings_from_recipe
    from r1lite.train.rollout.engine import RolloutEngine, RolloutMemoryError, RolloutSettings
    from r1lite.train.tiny import build_tokenizer

    r = load_recipe(recipe, profile, [])
    model, tok = _meta_policy(r), build_tokenizer()
    g, e, prompt = r.grpo, r.eval, prompt_tokens_for(r)
    grpo_engine = RolloutEngine(model, tok, settings_from_recipe(r))
    eval_engine = RolloutEngine(model, tok, RolloutSettings(max_new_tokens=e.max_new_tokens, greedy=True))
    cuda, seen = torch.device("cuda"), set()
    for card in CARDS:
        plan = make_plan(r, card, verdicts=False)
        total = int(card.gib * GIB)
        for stage, engine, rows, length in (
            ("grpo_rollout", grpo_engine, g.prompts_per_step * g.num_generations, prompt + g.max_completion_length),
            ("eval", eval_engine, e.batch_size, prompt + e.max_new_tokens),
        ):
            cache = -(-length // 256) * 256
            free = plan.free_before[stage]
            try:
                decided = engine.choose_merge(rows, cache, torch.bfloat16, cuda, free=free, total=total)
            except RolloutMemoryError:  # the engine refuses the rollout outright: the plan must not have it fit
                decided = None
                assert not plan.fits(), (card.name, stage)
            if decided is not None:
                assert decided == plan.merge[stage], (card.name, stage, free / GIB)
                seen.add(decided)
    assert seen == {True, False} or profile == "gpu-80gb", "the cards should span both decisions"


def test_plan_reports_each_stages_decision_and_the_sample_budget():
    result = runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb", "--json"])
    out = json.loads(result.output)
    assert set(out["merge"]) == {"grpo_rollout", "eval"} and set(out["compiled_decode"]) == {"grpo_rollout", "eval"}
    assert out["episodes"] == 150 * 8 * 8 and out["generated_tokens_max"] == 150 * 8 * 8 * 512
    text = runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb"]).output
    assert "9,600 episodes" in text and "LoRA for decoding" in text
    # the periodic eval decodes on the training engine's rebuilt buffers in the rollout's shape: no second cache
    plan = make_plan(load_recipe("countdown", "gpu-24gb"), card_by_name("24"))
    assert "eval_kv_cache" not in plan.stages["grpo_periodic_eval"].parts
    assert plan.stages["grpo_periodic_eval"].parts["kv_cache"] == plan.stages["grpo_rollout"].parts["kv_cache"]


@pytest.mark.parametrize("profile", ["gpu-12gb", "gpu-16gb", "gpu-16gb-qwen2.5-3b"])
def test_the_consumer_card_plans_print_hours_and_dollars(profile):
    """The cards the project is for have rental prices (hardware.CARDS, each with its source and date)."""
    out = json.loads(runner.invoke(app, ["plan", "countdown", "-p", profile, "--json"]).output)
    assert out["run_hours"] > 0 and out["usd"] is not None and out["usd"] > 0
    text = runner.invoke(app, ["plan", "countdown", "-p", profile]).output
    assert "n/a" not in text and "$" in text


def test_geforce_cards_are_planned_at_their_fp32_accumulate_rate():
    """PyTorch's bf16 matmuls accumulate in fp32, which GeForce cards run at half the marketed FP16 rate."""
    assert card_by_name("4090").tflops == pytest.approx(165.2) and card_by_name("4080").tflops == pytest.approx(97.5)
    assert card_by_name("16").name == "16 GB (RTX 4060 Ti)" and card_by_name("16").bandwidth_gbs == 288
    assert not card_by_name("T4").bf16


def test_one_card_table_and_one_matcher_for_sizes_models_and_device_names(monkeypatch):
    """`r1lite plan --gpu`, the cost report and the detected GPU find cards in one table through one matcher."""
    from r1lite.analyze.cost import price_for
    from r1lite.plan import hardware
    from r1lite.plan.hardware import find_card

    for card in CARDS:
        assert find_card(f"NVIDIA GeForce {card.model}") is card, card  # a device name holds the card's model
        assert price_for(f"NVIDIA {card.model}") == (
            (card.usd_per_hour, card.model) if card.usd_per_hour else (None, None)
        )
    assert find_card("NVIDIA A10G").model == "A10" and find_card("NVIDIA A100-SXM4-80GB").model == "A100"
    assert find_card("NVIDIA GeForce RTX 4060 Ti").model == "RTX 4060 Ti" and find_card("NVIDIA L40") is None
    assert card_by_name("16") is find_card("16gb") and card_by_name("4090") is find_card("NVIDIA GeForce RTX 4090")
    real = hardware.Hardware(True, "NVIDIA GeForce RTX 4090", 23.5, 23.0)
    monkeypatch.setattr(hardware, "probe", lambda: real)
    detected = hardware.detected_card()
    assert (detected.tflops, detected.usd_per_hour, detected.gib) == (165.2, 0.35, 23.5)
    from r1lite.cli.doctor import _card_line

    assert "24 GB (RTX 4090)" in _card_line(real.gpu_name) and "$0.35/h" in _card_line(real.gpu_name)
    assert "not in the card table" in _card_line("NVIDIA GeForce RTX 3080")


def test_the_cuda_context_is_in_every_peak_the_merge_rule_and_the_printed_plan():
    """The plan counts what a process holds outside PyTorch's allocator (CUDA context and kernel modules) at the
    cited 1.0 GiB, not the 0.6 GiB of a context before cuBLASLt, Triton and bitsandbytes load."""
    assert CUDA_CONTEXT_GIB >= 1.0
    card = card_by_name("16")
    p = make_plan(load_recipe("countdown", "gpu-16gb"), card, verdicts=False)
    stage = p.stages["grpo_train"]
    assert stage.peak_gib(True) == pytest.approx(stage.tensor_bytes * 1.05 / GIB + CUDA_CONTEXT_GIB)
    resident = p.stages["grpo_train"].parts["weights"] + p.stages["eval"].parts["adapter"]
    assert p.free_before["grpo_rollout"] == int(card.gib * GIB) - int(CUDA_CONTEXT_GIB * GIB) - int(resident * 1.05)
    text = " ".join(runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb"]).output.split())  # unwrapped
    assert f"+ {CUDA_CONTEXT_GIB:g} GiB CUDA context" in text


def test_the_consumer_default_decodes_merged_and_plans_under_three_hours_on_a_16_gb_card():
    """What `r1lite run countdown` picks on an RTX 4060 Ti 16 GB is Qwen3-1.7B-Base (minrl's model, its published
    shape), and `r1lite plan --gpu` plans that run: the merged 16-bit copy decodes GRPO's rollouts (rollout and
    training time-share the card), and the run at the typical completion length takes at most 3 hours, eager and
    captured both priced, the assumption named, every decode figure with its source."""
    s = shape_for("Qwen/Qwen3-1.7B-Base")
    assert s == shape_for("Qwen/Qwen3-1.7B") and (s.d, s.kv_heads, s.tied, s.qkv_bias) == (128, 8, True, False)
    assert s.params - s.vocab * s.hidden == pytest.approx(1.4e9, rel=0.02)  # "Non-Embedding: 1.4B" (model card)
    result = runner.invoke(app, ["plan", "countdown", "--gpu", "RTX 4060 Ti", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["profile"] == "gpu-16gb" and out["model"] == "Qwen/Qwen3-1.7B-Base"
    assert out["card"] == "16 GB (RTX 4060 Ti)" and out["fits_with_headroom"] is True
    assert out["merge"]["grpo_rollout"] is True and out["decode_assumed"] == "eager"
    typical = out["typical"]
    assert typical["run_hours"] <= 3.0 and typical["captured_run_hours"] < typical["run_hours"]
    assert out["captured"]["run_hours"] < out["run_hours"]
    sources = " ".join(out["timing_sources"])
    assert all(word in sources for word in ("calibrated", "assumed", "cited", "288 GB/s", "assumed eager"))
    three = json.loads(runner.invoke(app, ["plan", "countdown", "--gpu", "3090", "--json"]).output)
    assert three["profile"] == "gpu-24gb" and three["merge"]["grpo_rollout"] is True
    assert (
        json.loads(runner.invoke(app, ["plan", "countdown", "--gpu", "12", "--json"]).output)["profile"] == "gpu-12gb"
    )


def test_tinyzeros_qwen2_5_3b_decodes_merged_on_16_gb_now_that_rollout_and_training_time_share():
    """The merged copy and its cache no longer sit beside the training step's activations, so the 3B model's
    rollout decodes merged on a 16 GB card; its peak is the larger phase plus what persists."""
    plan = make_plan(load_recipe("countdown", "gpu-16gb-qwen2.5-3b"), card_by_name("16"), verdicts=False)
    assert plan.merge["grpo_rollout"] is True and plan.fits(headroom=HEADROOM)
    rollout, train = plan.stages["grpo_rollout"].parts, plan.stages["grpo_train"].parts
    assert "merged_copy" not in train and "kv_cache" not in train  # released before training
    assert "activations_kept" not in rollout
    assert rollout["weights"] == train["weights"] and rollout["lora_and_adam"] == train["lora_and_adam"]


def test_plan_times_the_run_at_a_cited_mean_completion_length_too():
    """Every completion at its maximum is an upper bound; the plan also prints the run at a stated mean length."""
    out = json.loads(runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb", "--json"]).output)
    typical = out["typical"]
    assert typical["completion_tokens"] == 400 and typical["measured"] is False and "minrl" in typical["source"]
    assert typical["generated_tokens"] == out["episodes"] * 400 < out["generated_tokens_max"]
    assert 0 < typical["step_seconds"] < out["step_seconds"] and 0 < typical["run_hours"] < out["run_hours"]
    assert 0 < typical["usd"] < out["usd"]
    text = " ".join(runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb"]).output.split())  # unwrapped
    assert "at its maximum" in text and "mean of 400 tokens" in text and "cited: minrl" in text


def test_a_measured_run_gives_the_mean_completion_length():
    """A GRPO run of the same recipe has logged its completions' mean length: the plan uses it, labelled measured."""
    recipe = load_recipe("countdown", "gpu-16gb")
    grpo = Path(recipe.output_dir) / recipe.run_name / "grpo"
    grpo.mkdir(parents=True)
    rows = [
        {"stage": "grpo", "step": 1, "completion_length": 300.0},
        {"stage": "grpo", "step": 2, "completion_length": 200.0},
    ]
    (grpo / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    typical = json.loads(runner.invoke(app, ["plan", "countdown", "-p", "gpu-16gb", "--json"]).output)["typical"]
    assert typical["completion_tokens"] == 250 and typical["measured"] is True and "measured" in typical["source"]
