"""What the docs promise that no other test checks: pass@k and avg@k inside the eval stage, and a sweep that runs
K runs at once (`--parallel K`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from r1lite.cli.main import app
from r1lite.fileio import read_json, read_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from r1lite.train.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("promises") / "m"))


def set_args(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


# ----------------------------------------------------------------------------------------------
# eval.pass_k: pass@k and avg@k in eval/<label>.json
# ----------------------------------------------------------------------------------------------

HITS = [0, 1, 2, 4]  # right answers among each problem's 4 samples


def test_pass_k_samples_k_answers_per_problem_and_reports_pass_at_k_and_avg_at_k(tiny, monkeypatch):
    """The eval stage samples k completions per problem from the model (at eval.temperature) and scores each; with
    HITS right per problem, avg@4 is each problem's share right, averaged (0/4, 1/4, 2/4, 4/4 -> 0.4375), and
    pass@4 the share of problems with at least one right (3 of 4). The model's own samples are replaced by known
    right and wrong answers after it made them, so the numbers are known."""
    from r1lite.stages import evaluate as evaluate_stage
    from r1lite.tasks.countdown import Countdown

    sets = [
        f"model.name={tiny}",
        "data.dir=data/tiny",
        "data.train_size=8",
        "data.test_size=4",
        "eval.examples=4",
        "eval.batch_size=4",
        "eval.max_new_tokens=8",
        "eval.pass_k=4",
        "eval.temperature=0.7",
        "tracking.wandb=disabled",
    ]
    generate, calls = evaluate_stage.generate, []
    task = Countdown()

    def scripted(model, tokenizer, prompts, max_new_tokens, batch_size, **kwargs):
        out = generate(model, tokenizer, prompts, max_new_tokens, batch_size, **kwargs)  # the model's own
        calls.append((kwargs, [len(group) for group in out]))
        if not kwargs.get("sample"):
            return out  # greedy: as the model answered
        problems = read_jsonl("data/tiny/test.jsonl")
        right = [f"\n</think>\n<answer>{task.answer(ex)}</answer>" for ex in problems]
        return [
            [(right[i] if j < HITS[i] else "\n</think>\n<answer>1 + 1</answer>", 9) for j in range(len(group))]
            for i, group in enumerate(out)
        ]

    monkeypatch.setattr(evaluate_stage, "generate", scripted)
    result = runner.invoke(app, ["--quiet", "eval", "countdown", "-p", "cpu", *set_args(sets)])
    assert result.exit_code == 0, result.output
    greedy, sampled = calls
    assert not greedy[0].get("sample") and greedy[1] == [1, 1, 1, 1]
    assert sampled[0]["sample"] and sampled[0]["n"] == 4 and sampled[0]["temperature"] == 0.7
    assert sampled[1] == [4, 4, 4, 4]  # the model gave 4 samples of each problem
    summary = read_json(Path("runs/countdown-cpu/eval/base.json"))
    assert summary["avg@4"] == pytest.approx(sum(h / 4 for h in HITS) / 4) == pytest.approx(0.4375)
    assert summary["pass@4"] == pytest.approx(0.75)
    rows = read_jsonl("runs/countdown-cpu/eval/base.jsonl")
    assert [[s["correct"] for s in r["samples"]] for r in rows] == [[j < h for j in range(4)] for h in HITS]
    assert summary["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 4)  # greedy stays greedy


# ----------------------------------------------------------------------------------------------
# sweep --parallel K
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_parallel_2_runs_two_runs_at_once_each_with_a_share_of_the_cores(tiny, monkeypatch):
    """Two configs that share no stage (another eval length: another base eval), so nothing orders them: with
    --parallel 2 each runs as its own `r1lite run` process, in its own slot, at the same time as the other, with
    half the cores (off CUDA)."""
    import os
    import time

    from r1lite.orchestrate import sweep

    launched, run_local = {}, sweep.run_local

    def timed(s, run, env=None):
        start = time.monotonic()
        code = run_local(s, run, env)
        launched[run.name] = (start, time.monotonic(), (env or {}).get("OMP_NUM_THREADS"))
        return code

    monkeypatch.setattr(sweep, "run_local", timed)
    sets = [
        f"model.name={tiny}",
        "data.dir=data/par",
        "data.train_size=16",
        "data.test_size=4",
        "sft.enabled=false",
        "grpo.max_steps=2",
        "grpo.prompts_per_step=2",
        "grpo.num_generations=2",
        "grpo.micro_batch_size=4",
        "grpo.max_completion_length=8",
        "eval.examples=4",
        "tracking.wandb=disabled",
    ]
    args = ["sweep", "countdown", "-p", "cpu", "--vary", "eval.max_new_tokens=8,12", "--name", "par"]
    result = runner.invoke(app, ["--quiet", *args, "--parallel", "2", *set_args(sets)])
    assert result.exit_code == 0, result.output
    assert "sweep par: 2 of 2 runs finished" in result.output
    names = ["max_new_tokens-8-s42", "max_new_tokens-12-s42"]
    assert sorted(launched) == sorted(names)
    for name in names:  # each a whole run of its own
        assert read_json(Path("runs/par") / name / "summary.json")["final"]["examples"] == 4
    assert "(slot 0)" in result.output and "(slot 1)" in result.output
    (a_start, a_end, a_threads), (b_start, b_end, b_threads) = (launched[n] for n in names)
    assert a_start < b_end and b_start < a_end, launched  # at the same time, not one after the other
    if not _cuda():
        assert a_threads == b_threads == str(max(1, (os.cpu_count() or 1) // 2))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
