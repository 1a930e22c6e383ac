"""The control arm (grpo.reward_control: shuffle) and the sampled metric (eval.metric: sampled, avg@k): the control
trains on the same rewards with the information of which completion earned them removed, sweeps run it beside the
real arm, and the report pairs the two."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from r1lite.analyze.sweep_report import build_sweep_report, collect, control_table, headline
from r1lite.cli.main import app
from r1lite.errors import RecipeError
from r1lite.fileio import read_jsonl, write_json, write_jsonl
from r1lite.orchestrate.sweep import Sweep
from r1lite.recipe.load import load_recipe
from r1lite.train.grpo_trainer import shuffle_rewards

runner = CliRunner()


def test_the_control_permutes_each_groups_rewards_among_its_own_completions():
    """Each group of G completions keeps its multiset of rewards (so its mean, its spread, its advantages and whether
    it has any signal); only which completion earned which is lost. Rows move whole (every reward function)."""
    rewards = torch.arange(48, dtype=torch.float32).reshape(16, 3)  # 4 groups of 4 completions x 3 reward functions
    shuffled = shuffle_rewards(rewards, group=4, seed=7)
    assert not torch.equal(shuffled, rewards)  # completions get other completions' rewards
    for g in range(4):
        mine, theirs = rewards[4 * g : 4 * g + 4], shuffled[4 * g : 4 * g + 4]
        assert sorted(map(tuple, theirs.tolist())) == sorted(map(tuple, mine.tolist()))  # the group's own, whole
    assert torch.equal(shuffle_rewards(rewards, group=4, seed=7), shuffled)  # seeded: a resumed run shuffles alike
    assert not torch.equal(shuffle_rewards(rewards, group=4, seed=8), shuffled)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("control") / "m", hidden=64, layers=2))


def score_rewards(tiny: str, tmp_path: Path, control: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rewards the trainer trains on, the completions' own rewards) for one scored batch of 2 groups of 4."""
    from grpo_setup import grpo_trainer, tiny_policy
    from peft import LoraConfig

    own = lambda completions, **_: [float(len(c)) for c in completions]  # noqa: E731
    model, tok = tiny_policy(tiny)
    rows = [{"prompt": f"{i} + {i} ="} for i in range(8)]
    lora = LoraConfig(r=4, target_modules="all-linear")
    trainer = grpo_trainer(model, tok, tmp_path / control, own, rows, 8, 4, peft_config=lora, reward_control=control)
    completions = [f"completion number {'x' * i}" for i in range(8)]
    inputs = [{"prompt": "p"} for _ in completions]
    trained = trainer._calculate_rewards(inputs, ["p"] * 8, completions, [[1]] * 8)
    return trained[:, 0], torch.tensor(own(completions))


def test_the_control_arm_trains_on_each_groups_rewards_in_another_order(tiny, tmp_path):
    real, truth = score_rewards(tiny, tmp_path, "none")
    assert torch.equal(real, truth)
    control, truth = score_rewards(tiny, tmp_path, "shuffle")
    assert not torch.equal(control, truth)
    for g in range(2):
        group = slice(4 * g, 4 * g + 4)
        assert torch.equal(control[group].sort().values, truth[group].sort().values)


def test_the_sampled_metric_needs_samples_and_is_named_avg_at_k():
    with pytest.raises(RecipeError, match=r"set eval\.pass_k"):
        load_recipe("countdown", "cpu", ["eval.metric=sampled"])
    recipe = load_recipe("countdown", "cpu", ["eval.metric=sampled", "eval.pass_k=8"])
    assert recipe.eval.metric_name() == "avg@8"
    assert load_recipe("countdown", "cpu").eval.metric_name() == "accuracy"


def test_the_control_adds_a_shuffled_arm_to_every_config():
    s = Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-5,5e-5"], 1, "c", control=True)
    assert [c for c, _ in s.configs()] == [
        "learning_rate-1e-5_reward_control-none",
        "learning_rate-1e-5_reward_control-shuffle",
        "learning_rate-5e-5_reward_control-none",
        "learning_rate-5e-5_reward_control-shuffle",
    ]
    assert s.recipe_of(s.runs()[1]).grpo.reward_control == "shuffle"
    with pytest.raises(RecipeError, match=r"--control adds grpo\.reward_control"):
        Sweep.from_args("countdown", "cpu", ["grpo.reward_control=none,shuffle"], 1, control=True)
    result = runner.invoke(app, ["sweep", "countdown", "-p", "cpu", "--control", "--seeds", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "reward_control-shuffle" in result.output and "the whole sweep: 4 runs" in result.output


def test_the_demo_rl_sweep_file_declares_its_metric_and_runs_both_arms():
    root = Path(__file__).resolve().parent.parent / "recipes" / "sweeps"
    s = Sweep.from_file(root / "demo-rl.yaml")
    assert [c for c, _ in s.configs()] == ["reward_control-none", "reward_control-shuffle"]
    assert len(s.seeds) == 2 and len(Sweep.from_file(root / "demo-rl.yaml", seeds=1).runs()) == 2
    recipe = s.recipe_of(s.runs()[0])
    assert recipe.eval.metric == "sampled" and recipe.eval.pass_k >= 4


def fake_control_sweep(root: Path, arms: dict[str, list[tuple[float, float]]], problems: int = 256) -> None:
    """A finished --control sweep: per arm and seed, (greedy accuracy, avg@4) on the same problems."""
    runs, configs = {}, []
    for arm, per_seed in arms.items():
        config = f"reward_control-{arm}"
        configs.append(config)
        for seed, (greedy, sampled) in enumerate(per_seed):
            name = f"{config}-s{seed}"
            runs[name] = {"config": config, "seed": seed, "set": [f"grpo.reward_control={arm}", f"seed={seed}"]}
            right, hits = round(greedy * problems), round(sampled * problems * 4)
            rows = [
                {
                    "nums": [i], "target": i, "correct": i < right,
                    "samples": [{"correct": i * 4 + k < hits} for k in range(4)],
                }
                for i in range(problems)
            ]  # fmt: skip
            write_jsonl(root / name / "eval/final.jsonl", rows)
            final = {"accuracy": right / problems, "avg@4": hits / problems / 4, "format_rate": 1.0, "mean_length": 9}
            effect = {"estimate": 0.05, "low": 0.01, "high": 0.09, "n": problems}
            summary = {"final": final, "metric": "avg@4", "cost": {"total": {"seconds": 60.0, "usd": 0.0}}}
            summary["grpo_steps"] = {"trained": 12 - 2 * seed * (arm == "shuffle"), "planned": 12}
            write_json(root / name / "summary.json", {**summary, "changes_sampled": {"final_vs_warmup": effect}})
    vary = {"grpo.reward_control": ["none", "shuffle"]}
    manifest = {"name": root.name, "recipe": "countdown", "profile": "cpu-rl", "vary": vary, "seeds": [0, 1]}
    write_json(root / "sweep.json", {**manifest, "set": [], "configs": configs, "runs": runs})


def test_the_report_pairs_each_real_arm_with_its_control_in_the_declared_metric(tmp_path):
    # sampled: the real arm learned (+10 pt avg@4); greedy: both alike
    fake_control_sweep(tmp_path / "s", {"none": [(0.15, 0.20), (0.15, 0.22)], "shuffle": [(0.15, 0.10), (0.15, 0.12)]})
    manifest, results = collect(tmp_path / "s")
    sampled = control_table(manifest, results, "sampled")
    greedy = control_table(manifest, results, "greedy")
    assert "| real arm avg@4 | control arm avg@4 |" in sampled[0]
    assert "+10.0 pt" in sampled[2] and sampled[2].rstrip(" |").endswith("*")
    assert "+0.0 pt" in greedy[2] and not greedy[2].rstrip(" |").endswith("*")
    top = headline(manifest, results)
    assert top[0].startswith("avg@4 (declared metric) on the test split, real arm vs control arm")
    assert "| 12/12 12/12, 12/12 10/12 |" in top[3]  # steps trained of planned, per seed: unlike arms show
    md = build_sweep_report(tmp_path / "s").with_suffix(".md").read_text()
    assert md.index("### avg@4 (declared metric)") < md.index("### accuracy")
    assert "## Real arm vs control arm" in md and "+5.0 pt [+1.0, +9.0] *" in md  # each run's own effect
    result = runner.invoke(app, ["sweep", "report", str(tmp_path / "s")])
    assert result.exit_code == 0 and "+10.0 pt" in result.output


def test_a_sweep_run_in_parts_reports_every_seed(tmp_path):
    s = Sweep.from_args("countdown", "cpu", [], 2, "p", [f"output_dir={tmp_path}"], control=True)
    one = Sweep.from_args("countdown", "cpu", [], 1, "p", [f"output_dir={tmp_path}"], control=True)
    merged = one.manifest(s.manifest())
    assert sorted(merged["runs"]) == sorted(r.name for r in s.runs()) and merged["seeds"] == [42, 43]
    other = Sweep.from_args("countdown", "cpu", ["grpo.learning_rate=1e-5,5e-5"], 1, "p")
    assert sorted(other.manifest(s.manifest())["runs"]) == sorted(r.name for r in other.runs())  # another grid


@pytest.mark.slow
def test_a_run_samples_the_evals_its_claims_compare_and_pairs_both_metrics(tmp_path, monkeypatch, tiny):
    """With a warm-up before GRPO the base eval stays greedy (GRPO is judged against the warm-up); the warm-up and
    final evals sample, and the summary holds both metrics' paired changes, the declared one named."""
    from r1lite.orchestrate import pipeline

    monkeypatch.chdir(tmp_path)
    sets = [
        f"model.name={tiny}", "data.dir=data/c", "data.train_size=16", "data.test_size=4", "sft.examples=8",
        "sft.batch_size=8", "grpo.max_steps=1", "grpo.prompts_per_step=2", "grpo.num_generations=2",
        "grpo.micro_batch_size=4", "grpo.max_completion_length=8", "eval.examples=4", "eval.max_new_tokens=8",
        "eval.pass_k=2", "eval.metric=sampled", "tracking.wandb=disabled",
    ]  # fmt: skip
    summary = pipeline.run(load_recipe("countdown", "cpu", sets))
    rows = {label: read_jsonl(tmp_path / "runs/countdown-cpu/eval" / f"{label}.jsonl") for label in ("base", "final")}
    assert not any(r.get("samples") for r in rows["base"]) and all(len(r["samples"]) == 2 for r in rows["final"])
    assert summary["metric"] == "avg@2" and "avg@2" in summary["final"] and "avg@2" not in summary["base"]
    assert set(summary["changes_sampled"]) == {"final_vs_warmup"}
    assert set(summary["changes"]) == {"final_vs_base", "warmup_vs_base", "final_vs_warmup"}
