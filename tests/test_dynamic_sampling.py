"""DAPO's dynamic sampling in r1lite's GRPOTrainer: groups without reward variance are replaced by fresh ones,
every completion stays with its own example, and the batch keeps its size."""

from __future__ import annotations

import zlib

import pytest
import torch

FLAT, VARIED = "Try 4 * 5 = 20", "Using the numbers [3, 5, 2], create"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("ds") / "m", hidden=64, layers=2))


def kind_reward(completions, kind, **_):
    """No signal for `flat` prompts (always 0.5); a completion-dependent score for `varied` ones."""
    return [0.5 if k == "flat" else zlib.crc32(c.encode()) % 97 / 97 for c, k in zip(completions, kind, strict=True)]


def trainer(tiny: str, tmp_path, rounds: int, prompts: list[tuple[str, str]], control: str = "none"):
    from grpo_setup import grpo_trainer, tiny_policy
    from peft import LoraConfig

    model, tok = tiny_policy(tiny)
    rows = [{"prompt": p, "kind": k} for p, k in prompts]
    config = dict(scale_rewards="none")
    lora = LoraConfig(r=4, target_modules="all-linear")
    extras = dict(peft_config=lora, dynamic_sampling_rounds=rounds, reward_control=control)
    return grpo_trainer(model, tok, tmp_path, kind_reward, rows, 16, 4, config, **extras), tok


def kinds_of(out, tok) -> list[str]:
    texts = tok.batch_decode(out["prompt_ids"], skip_special_tokens=True)
    return ["flat" if t.strip().endswith(FLAT) else "varied" for t in texts]


def test_groups_without_signal_are_replaced_and_each_completion_keeps_its_example(tiny, tmp_path):
    pool = [(FLAT, "flat")] * 20 + [(VARIED, "varied")] * 20
    t, tok = trainer(tiny, tmp_path, rounds=8, prompts=pool)
    batch = [t.train_dataset[i] for i in (0, 1, 20, 21) for _ in range(4)]  # 2 flat groups, 2 varied
    torch.manual_seed(0)
    out = t._generate_and_score_completions(batch)
    assert len(out["completion_ids"]) == len(batch) == 16  # the batch keeps its size
    assert kinds_of(out, tok) == ["varied"] * 16  # only groups with signal, each row with its own prompt
    advantages = out["advantages"].view(4, 4)
    assert (advantages.abs().sum(dim=1) > 0).all()  # every group teaches something
    assert out["num_items_in_batch"] == out["completion_mask"].sum()
    metrics = t._metrics["train"]
    kept = metrics["r1lite/dynamic_sampling/kept"]
    assert len(kept) == 1 and 0 < kept[0] < 1
    # the step logs the groups it trains on, not every group it drew: no flat group's 0.5 in the mean reward
    rewards = [kind_reward([tok.decode(ids, skip_special_tokens=True)], ["varied"])[0] for ids in out["completion_ids"]]
    assert metrics["rewards/kind_reward/mean"] == [pytest.approx(sum(rewards) / 16, abs=1e-6)]
    assert metrics["r1lite/groups_no_signal"] == [0.0]
    drawn = metrics["r1lite/dynamic_sampling/rounds"][0] * 4
    assert metrics["r1lite/dynamic_sampling/discarded"] == [drawn - 4]  # groups drawn but not trained on


def test_the_control_arm_keeps_the_same_groups_as_the_real_arm(tiny, tmp_path):
    """Rewards permuted within each group keep each group's signal: on the same draws, the control's no-signal flags
    and the groups dynamic sampling keeps are the real arm's."""
    pool = [(FLAT, "flat")] * 20 + [(VARIED, "varied")] * 20
    chosen = {}
    for arm in ("none", "shuffle"):
        t, _ = trainer(tiny, tmp_path / arm, rounds=8, prompts=pool, control=arm)
        batch = [t.train_dataset[i] for i in (0, 1, 20, 21) for _ in range(4)]
        torch.manual_seed(0)
        out = t._generate_and_score_completions(batch)
        chosen[arm] = (out["prompt_ids"].tolist(), out["completion_ids"].tolist(), list(t._signal))
        chosen[arm] += (t._metrics["train"]["r1lite/dynamic_sampling/kept"],)
    assert chosen["shuffle"] == chosen["none"]


def test_without_dynamic_sampling_the_batch_is_what_was_drawn(tiny, tmp_path):
    pool = [(FLAT, "flat")] * 20 + [(VARIED, "varied")] * 20
    t, tok = trainer(tiny, tmp_path, rounds=0, prompts=pool)
    batch = [t.train_dataset[i] for i in (0, 1, 20, 21) for _ in range(4)]
    out = t._generate_and_score_completions(batch)
    assert len(out["completion_ids"]) == 16 and kinds_of(out, tok) == ["flat"] * 8 + ["varied"] * 8
    assert "r1lite/dynamic_sampling/kept" not in t._metrics["train"]


def test_a_step_with_no_signal_anywhere_keeps_its_size(tiny, tmp_path):
    t, _ = trainer(tiny, tmp_path, rounds=2, prompts=[(FLAT, "flat")] * 12)
    batch = [t.train_dataset[i] for i in range(4) for _ in range(4)]
    out = t._generate_and_score_completions(batch)
    assert len(out["completion_ids"]) == 16 and out["advantages"].abs().max() == 0
    assert t._metrics["train"]["r1lite/dynamic_sampling/kept"] == [0.0]
    assert t._metrics["train"]["r1lite/dynamic_sampling/rounds"] == [3.0]  # the first draw and two more


def test_the_plain_cpu_head_scores_as_trls_fused_head(tiny, tmp_path):
    """Off CUDA r1lite scores completions with transformers' own head over the completion only; on a batch with
    left-padded prompts and right-padded completions it gives TRL's log-probs and entropies (0 on padding)."""
    from trl import GRPOTrainer as StockGRPOTrainer

    t, _ = trainer(tiny, tmp_path, rounds=0, prompts=[(FLAT, "flat")] * 4)
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 14))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    mask[1, -4:] = 0  # a completion that ended early
    mask[2, -1:] = 0
    ours = t._get_per_token_logps_and_entropies(t.model, ids, mask, 6, compute_entropy=True)
    stock = StockGRPOTrainer._get_per_token_logps_and_entropies(t, t.model, ids, mask, 6, compute_entropy=True)
    torch.testing.assert_close(ours[0], stock[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours[1], stock[1], atol=2e-5, rtol=1e-5)
    assert ours[0][1, -4:].abs().sum() == 0 and ours[1][1, -4:].abs().sum() == 0


def test_a_batch_for_several_updates_scores_its_old_log_probs_once_for_the_groups_it_keeps(tiny, tmp_path):
    """With num_iterations 2 the batch carries the old policy's log-probs (the clipped ratio of the second update
    compares against them): computed once, on the kept groups, not in every round for groups thrown away; equal to
    TRL's own computation on those rows."""
    from grpo_setup import grpo_trainer, tiny_policy
    from peft import LoraConfig

    model, tok = tiny_policy(tiny)
    pool = [(FLAT, "flat")] * 20 + [(VARIED, "varied")] * 20
    rows = [{"prompt": p, "kind": k} for p, k in pool]
    config = dict(scale_rewards="none", num_iterations=2)
    lora = LoraConfig(r=4, target_modules="all-linear")
    t = grpo_trainer(
        model, tok, tmp_path, kind_reward, rows, 16, 4, config, peft_config=lora, dynamic_sampling_rounds=8
    )
    calls, score = [], t._get_per_token_logps_and_entropies
    t._get_per_token_logps_and_entropies = lambda *a, **k: (calls.append(a[1].shape), score(*a, **k))[1]
    batch = [t.train_dataset[i] for i in (0, 1, 20, 21) for _ in range(4)]  # 2 flat groups: at least 2 rounds
    torch.manual_seed(0)
    out = t._generate_and_score_completions(batch)
    assert t._metrics["train"]["r1lite/dynamic_sampling/rounds"][0] >= 2
    assert len(calls) == 1 and calls[0][0] == 16  # one scoring pass, of the 16 rows kept
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        fresh, _, _ = score(t.model, ids, mask, out["completion_ids"].size(1), 16)
    torch.testing.assert_close(out["old_per_token_logps"], fresh)
