"""Recipe resolution: profiles, overrides, and one-line errors that name the fix."""

from __future__ import annotations

import pytest

from r1lite.errors import RecipeError
from r1lite.plan.hardware import Hardware, pick_profile
from r1lite.recipe.load import load_recipe, to_yaml


def test_profile_merges_over_base():
    base = load_recipe("countdown")
    cpu = load_recipe("countdown", "cpu")
    assert base.model.name == "Qwen/Qwen2.5-3B" and base.quantization.mode == "nf4"
    assert cpu.model.name == "smollm2-135m-instruct" and cpu.quantization.mode == "none"
    assert cpu.grpo.loss_type == base.grpo.loss_type  # untouched keys survive the merge
    assert cpu.run_name == "countdown-cpu"


def test_overrides_are_typed():
    r = load_recipe(
        "countdown", "cpu", ["grpo.max_steps=3", "data.countdown.num_counts=[4]", "grpo.trl.warmup_steps=10"]
    )
    assert r.grpo.max_steps == 3 and r.data.settings["num_counts"] == [4] and r.grpo.trl == {"warmup_steps": 10}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["grpo.max_stesp=3"], "unknown key 'grpo.max_stesp'; did you mean 'grpo.max_steps'?"),
        (["gpro.beta=0"], "unknown key 'gpro.beta'; did you mean 'grpo'?"),
        (["sft.learning_rate=fast"], "sft.learning_rate: Input should be a valid number"),
        (["grpo.max_steps"], "needs the form key.path=value"),
        (["grpo.micro_batch_size=7"], "micro_batch_size (7) must divide"),
        (["quantization.mode=int4"], "quantization.mode: Input should be 'nf4', 'fp4', 'int8' or 'none'"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(RecipeError) as e:
        load_recipe("countdown", "cpu", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("grpo.lr", "grpo.learning_rate"),  # difflib alone finds grpo.trl closer
        ("sft.bs", "sft.batch_size"),
        ("grpo.bs", "grpo.micro_batch_size"),  # the same alias, the field this section has
        ("grpo.batch_size", "grpo.micro_batch_size"),
        ("sft.epoch", "sft.epochs"),
        ("sft.steps", "sft.max_steps"),
        ("eval.temp", "eval.temperature"),
        ("lora.rank", "lora.r"),
        ("grpo.max_tokens", "grpo.max_completion_length"),
        ("eval.max_tokens", "eval.max_new_tokens"),
    ],
)
def test_common_names_suggest_the_field(key, meant):
    with pytest.raises(RecipeError) as e:
        load_recipe("countdown", "cpu", [f"{key}=3"])
    assert str(e.value) == f"unknown key '{key}'; did you mean '{meant}'?"


def test_plan_suggests_learning_rate_for_lr():
    from typer.testing import CliRunner

    from r1lite.cli.main import app

    r = CliRunner().invoke(app, ["plan", "countdown", "--set", "grpo.lr=3"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: unknown key 'grpo.lr'; did you mean 'grpo.learning_rate'?"


def test_unknown_key_in_file_names_closest(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: bad\nsft:\n  learnig_rate: 0.1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'sft.learnig_rate'; did you mean 'sft.learning_rate'\?"):
        load_recipe(str(tmp_path / "bad.yaml"))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'countdown'"):
        load_recipe("countdwn")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "none.yaml"))
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(tmp_path / "broken.yaml"))
    with pytest.raises(RecipeError, match="no profile 'gpu-8gb'"):
        load_recipe("countdown", "gpu-8gb")


@pytest.mark.parametrize(("name", "profile"), [("countdown", "gpu-24gb"), ("knights_knaves", "gpu-16gb")])
def test_resolved_recipe_round_trips(tmp_path, name, profile):
    r = load_recipe(name, profile)
    (tmp_path / "resolved.yaml").write_text(to_yaml(r))
    assert load_recipe(str(tmp_path / "resolved.yaml")) == r  # the task's settings come back under data.<task>


@pytest.mark.parametrize(
    ("cuda", "gib", "expected"),
    [
        (False, 0, "cpu"),
        (True, 11.6, "gpu-12gb"),
        (True, 15.6, "gpu-16gb"),
        (True, 23.6, "gpu-24gb"),
        (True, 79.2, "gpu-80gb"),
        (True, 139.8, "gpu-80gb"),
        (True, 7.8, "gpu-12gb"),
    ],
)
def test_profile_detection(cuda, gib, expected):
    available = ["cpu", "gpu-12gb", "gpu-16gb", "gpu-24gb", "gpu-80gb"]
    assert pick_profile(available, Hardware(cuda, "GPU" if cuda else None, gib, gib)) == expected


def test_trl_passthrough_is_checked_against_trl():
    from trl import GRPOConfig

    from r1lite.recipe.config import build_trl_config

    ours = dict(output_dir="o", per_device_train_batch_size=4, num_generations=2, use_cpu=True, report_to=[])
    assert build_trl_config(GRPOConfig, ours, {"learning_rate": 3e-5}, "grpo").learning_rate == 3e-5  # recipe wins
    with pytest.raises(
        RecipeError,
        match=r"'grpo.trl.learning_rat' is not a field of trl.GRPOConfig; "
        r"did you mean 'grpo.trl.learning_rate'\?",
    ):
        build_trl_config(GRPOConfig, ours, {"learning_rat": 0.1}, "grpo")
    with pytest.raises(RecipeError, match=r"did you mean 'grpo.trl.learning_rate'\?"):
        build_trl_config(GRPOConfig, ours, {"lr": 0.1}, "grpo")  # the alias table covers TRL's names too
    with pytest.raises(RecipeError, match=r"^grpo.trl: trl.GRPOConfig rejected the settings"):
        build_trl_config(GRPOConfig, {**ours, "num_generations": 3}, {}, "grpo")  # 4 is not divisible by 3


def test_bad_trl_key_fails_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from r1lite.cli.main import app

    r = CliRunner().invoke(app, ["run", "countdown", "-p", "cpu", "--set", "sft.trl.lr_schedular_type=cosine"])
    assert r.exit_code == 2 and "did you mean 'sft.trl.lr_scheduler_type'?" in r.output
    assert not (tmp_path / "runs").exists()
