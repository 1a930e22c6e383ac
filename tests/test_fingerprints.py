"""One classification of the training stages' settings (config.EFFECTS): what a changed recipe may continue."""

from __future__ import annotations

import pytest

from r1lite.recipe.config import EFFECTS, GRPOConfig, SFTConfig
from r1lite.recipe.load import load_recipe
from r1lite.runs.resume import resume_key


@pytest.mark.parametrize(("stage", "section"), [("sft", SFTConfig), ("grpo", GRPOConfig)])
def test_every_setting_of_a_training_stage_is_classified_once(stage, section):
    """A new setting must say whether it shapes the weights; until it does, this fails (not a silent resume)."""
    assert set(EFFECTS[stage]) == set(section.model_fields), "classify it in config.EFFECTS"
    assert set(EFFECTS[stage].values()) <= {"weights", "extends", "split"}


@pytest.mark.parametrize(
    ("stage", "setting", "continues"),
    [
        ("grpo", "grpo.micro_batch_size=1", True),
        ("grpo", "grpo.max_minutes=3", True),
        ("grpo", "grpo.max_steps=400", True),
        ("grpo", "grpo.learning_rate=3e-5", False),
        ("grpo", "grpo.reward_control=shuffle", False),
        ("sft", "sft.batch_size=2", False),  # the global batch changes with it
        ("sft", "sft.max_steps=50", True),
        ("sft", "sft.trace_style=search", False),
    ],
)
def test_what_a_changed_setting_may_continue(stage, setting, continues):
    before, after = load_recipe("countdown", "cpu"), load_recipe("countdown", "cpu", [setting])
    assert (resume_key(before, stage) == resume_key(after, stage)) is continues


def test_a_split_that_keeps_the_global_batch_continues_the_warm_up():
    a = load_recipe("countdown", "cpu", ["sft.batch_size=4", "sft.grad_accum=2"])
    b = load_recipe("countdown", "cpu", ["sft.batch_size=2", "sft.grad_accum=4"])
    assert resume_key(a, "sft") == resume_key(b, "sft")
