"""Each GRPO diagnostic fires on the pattern it names, says the likely cause and the setting to change,
and stays quiet on a healthy run."""

from __future__ import annotations

import pytest

from r1lite.recipe.load import load_recipe
from r1lite.train.diagnostics import CHECKS, Diagnostics

HEALTHY = {
    "reward": 0.3,
    "truncated_rate": 0.05,
    "frac_reward_zero_std": 0.2,
    "groups_no_signal": 0.2,
    "entropy": 0.8,
    "completion_length": 300.0,
    "accuracy": 0.3,
    "format_rate": 0.8,
    "rollout_logprob_gap": 0.01,
}


def run(steps: list[dict], recipe_sets: tuple[str, ...] = ()) -> Diagnostics:
    watch = Diagnostics(load_recipe("countdown", "gpu-16gb", list(recipe_sets)))
    for m in steps:
        watch.update(m)
    return watch


def test_a_healthy_run_raises_nothing():
    watch = run([HEALTHY] * 20, ("grpo.beta=0.04",))
    assert watch.active == {}


@pytest.mark.parametrize(
    ("name", "steps", "fix"),
    [
        ("truncated", [{**HEALTHY, "truncated_rate": 0.82}], "raise grpo.max_completion_length"),
        ("no_signal", [{**HEALTHY, "groups_no_signal": 0.9}], "raise grpo.num_generations"),
        ("entropy_collapse", [{**HEALTHY, "entropy": 0.02}], "lower grpo.learning_rate"),
        ("logprob_gap", [{**HEALTHY, "rollout_logprob_gap": 0.3}], "grpo.rollout_merge=unmerged"),
        (
            "length_collapse",
            [{**HEALTHY, "completion_length": n} for n in (300, 280, 250, 200, 160, 120)],
            "check that a short wrong answer",
        ),
        (
            "reward_gaming",
            [{**HEALTHY, "format_rate": 0.3 + 0.05 * i, "accuracy": 0.3 - 0.01 * i} for i in range(10)],
            "lower its weight",
        ),
    ],
)
def test_each_check_names_the_problem_and_the_fix(name, steps, fix):
    watch = run([HEALTHY] * 5 + steps)
    assert name in watch.active and fix in watch.active[name]
    assert set(watch.active) == {name}


def test_truncation_message_quotes_the_numbers():
    watch = Diagnostics(load_recipe("countdown", "gpu-16gb", ["grpo.max_completion_length=256"]))
    [finding] = watch.update({**HEALTHY, "truncated_rate": 0.82})
    assert finding.message.startswith("82% of completions hit max_completion_length=256")


def test_kl_only_matters_with_a_reference():
    assert "kl_drift" not in run([{**HEALTHY, "kl": 2.0}]).active  # beta 0: no reference, KL is not a cost
    assert "kl_drift" in run([{**HEALTHY, "kl": 2.0}], ("grpo.beta=0.04",)).active


def test_findings_are_reported_once_when_they_start_and_again_after_they_clear():
    watch = Diagnostics(load_recipe("countdown", "gpu-16gb"))
    bad = {**HEALTHY, "groups_no_signal": 0.9}
    started = [watch.update(m) for m in (bad, bad, HEALTHY, bad)]
    assert [len(s) for s in started] == [1, 0, 0, 1]
    assert set(CHECKS) >= {"truncated", "no_signal", "entropy_collapse", "kl_drift", "logprob_gap"}


def test_no_signal_sees_equal_rewards_whose_std_is_float_noise():
    """The demo's step 2 (cpu profile, 4 prompts x 8): every completion scored 0.6, yet TRL logged a reward std of
    6e-8 and frac_reward_zero_std 0.0, because torch.isclose(std, 0) has an absolute tolerance of 1e-8."""
    import torch

    from r1lite.train.diagnostics import groups_without_signal

    # 0.6 as a weighted sum in float32 (0.1 x 1.0 + 1.0 x 0.5), one ulp apart in some rows
    base = torch.tensor(0.1) * 1.0 + torch.tensor(1.0) * 0.5
    up = torch.nextafter(base, torch.tensor(1.0))
    group = torch.stack([base, up, base, base, up, base, base, up])
    trl_says_zero = torch.isclose(group.std(), torch.tensor(0.0))
    assert not trl_says_zero and 0 < group.std().item() < 1e-7  # TRL would count this group as signal
    rewards = torch.cat([group, group, group, group]).tolist()  # 4 prompts x 8
    assert groups_without_signal(rewards, 8) == [True] * 4
    assert groups_without_signal([0.1] * 7 + [1.1], 8) == [False]  # one right answer is signal
    assert groups_without_signal([0.0] * 8, 8) == [True]
    watch = run([{**HEALTHY, "frac_reward_zero_std": 0.0, "groups_no_signal": 1.0}])
    assert "no_signal" in watch.active
    quiet = run([{**HEALTHY, "frac_reward_zero_std": 1.0, "groups_no_signal": 0.0}])
    assert "no_signal" not in quiet.active  # TRL's figure is not the diagnosis
