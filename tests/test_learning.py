"""GRPO makes a model better: a toy reward with a known optimum rises, for every policy and rollout backend.

The toy task: completions are scored by the share of their characters that are digits (optimum 1.0;
a random tiny model writes ~1-2 %). Twenty GRPO steps through r1lite's own GRPO stage (TRL's trainer,
our adapters, our engine) must raise it several-fold. Each defect this guards against was injected
once and made these tests fail (see the closing note of the issue that added them): a flipped sign
of the policy gradient, a frozen adapter, and engine log-probs that disagree with the trainer's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from r1lite.fileio import read_jsonl
from r1lite.recipe.load import load_recipe


def digit_share(completion: str, nums=None, target=None) -> tuple[float, str]:
    digits = sum(c.isdigit() for c in completion)
    return digits / max(len(completion), 1), f"{digits} digits"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    # weights large enough that a token can become likely (see build_tiny_model's init_std)
    return build_tiny_model(tmp_path_factory.mktemp("learn") / "m", hidden=64, layers=2, init_std=0.2)


def train(tiny: Path, quant: str, backend: str, monkeypatch, device: str = "cpu", *extra: str) -> list[dict]:
    from r1lite.stages import data, grpo
    from r1lite.tasks import rewards

    monkeypatch.setitem(rewards._REGISTRY, "test_digit_share", digit_share)
    recipe = load_recipe(
        "countdown",
        "cpu",
        [
            f"model.name={tiny}",
            "data.dir=data/t",
            "data.train_size=64",
            "data.test_size=4",
            "sft.enabled=false",
            f"model.device={device}",
            "model.dtype=float32",
            f"quantization.mode={quant}",
            "quantization.compute_dtype=float32",
            "lora.dropout=0.0",
            f"grpo.rollout={backend}",
            "grpo.max_steps=20",
            "grpo.prompts_per_step=4",
            "grpo.num_generations=8",
            "grpo.micro_batch_size=32",
            "grpo.max_completion_length=8",
            "grpo.learning_rate=1e-2",
            "grpo.temperature=1.0",
            'grpo.rewards=[{"name": "test_digit_share", "weight": 1.0}]',
            "grpo.eval_every=0",
            "grpo.save_every=100",
            "tracking.wandb=disabled",
            *extra,
        ],
    )
    data.run(recipe.data)
    grpo.run(recipe, Path("run"))
    return [r for r in read_jsonl(Path("run/grpo/metrics.jsonl")) if "reward" in r]


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize(("quant", "backend"), [("none", "trl"), ("none", "engine"), ("nf4", "trl"), ("nf4", "engine")])
def test_grpo_raises_a_toy_reward(tiny, quant, backend, monkeypatch, device):
    steps = train(tiny, quant, backend, monkeypatch, device)
    rewards = [r["reward"] for r in steps]
    assert len(rewards) == 20
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end >= 2.5 * start and end - start >= 0.04, f"reward {start:.3f} -> {end:.3f}: {rewards}"
    assert all("groups_no_signal" in r for r in steps)  # r1lite's own share, logged every step
    if backend == "engine":  # the engine samples what the trainer scores
        gaps = [r["rollout_logprob_gap"] for r in steps]
        assert max(gaps) < 0.05, gaps
        assert not any("logprob_gap" in r.get("diagnostics", {}) for r in steps)


@pytest.mark.slow
def test_dynamic_sampling_still_raises_the_reward_and_logs_what_it_kept(tiny, monkeypatch):
    # 20 toy steps vary by seed as much as by method: without dynamic sampling seed 42 ends 4.2x up and seed 2 2.9x,
    # with it 2.1x and 7x (2026-12-07). Seed 2 draws a second round at step 1; runs are identical until one does.
    steps = train(tiny, "none", "engine", monkeypatch, "cpu", "grpo.dynamic_sampling=true", "seed=2")
    assert any(r["sampling_rounds"] > 1 for r in steps)  # the dynamic path ran, not only plain GRPO
    rewards = [r["reward"] for r in steps]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end >= 2.5 * start and end - start >= 0.04, f"reward {start:.3f} -> {end:.3f}: {rewards}"
    # a step whose kept groups filled the batch trained on signal only, and logs that batch, not every group drawn
    full = [r for r in steps if round(r["groups_kept"] * r["sampling_rounds"], 6) == 1]
    assert full and all(r["groups_no_signal"] == 0 for r in full), [
        (r["groups_kept"], r["groups_no_signal"]) for r in steps
    ]


@pytest.mark.slow
def test_grpo_learns_under_cpu_bf16(tiny, monkeypatch):
    """model.cpu_bf16 (autocast training, a bf16 copy for the engine's rollouts) still raises the reward, and the
    engine's bf16 samples stay close to what the trainer scores."""
    steps = train(tiny, "none", "engine", monkeypatch, "cpu", "model.cpu_bf16=true")
    rewards = [r["reward"] for r in steps]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end >= 2.5 * start and end - start >= 0.04, f"reward {start:.3f} -> {end:.3f}: {rewards}"
    assert max(r["rollout_logprob_gap"] for r in steps) < 0.1


@pytest.mark.slow
def test_the_control_arm_does_not_learn_the_toy_reward(tiny, monkeypatch):
    """The same GRPO on each group's rewards permuted among its own completions (grpo.reward_control: shuffle): the
    reward that the real arm raises several-fold above stays where it was, so a control wired to the real
    rewards fails here."""
    steps = train(tiny, "none", "engine", monkeypatch, "cpu", "grpo.reward_control=shuffle")
    rewards = [r["reward"] for r in steps]
    assert len(rewards) == 20
    start, end = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert end < 1.5 * start + 0.01, f"reward {start:.3f} -> {end:.3f}: {rewards}"
