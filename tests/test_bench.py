"""The rollout benchmark's harness runs end to end on CPU (a smoke test: no speed is asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_rollout_bench_smoke(tmp_path):
    path = Path(__file__).resolve().parent.parent / "bench" / "rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_rollout"] = bench
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    [result] = bench.main(["--shape", "tiny", "--steps", "2", "--tokens", "8", "--out", str(out)])
    assert set(result["results"]) == {"trl", "engine"}
    for backend in result["results"].values():
        assert backend["tokens_per_generation"] == 2 * 2 * 8  # EOS disabled: every completion full length
        assert backend["completion_tokens_per_s"] > 0 and len(backend["step_s_all"]) == 2
    assert result["throughput_ratio"] > 0 and out.is_file()


@pytest.mark.slow
def test_gpu_check_dry_run_prints_the_table_it_would_print_on_a_gpu(tmp_path, capsys):
    """`python bench/gpu_check.py --dry-run`: every GPU profile through base eval, SFT and GRPO (with its periodic
    eval) on tiny shapes, the CUDA tests (skipped here) and the rollout comparison, into one JSON and one table."""
    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    out = tmp_path / "gpu.json"
    report = check.main(["--dry-run", "--out", str(out)])
    assert out.is_file() and not report["skipped"]
    assert [p["profile"] for p in report["profiles"]] == list(check.PROFILES)
    for p in report["profiles"]:
        assert "error" not in p, p
        assert set(p["stages"]) == {"eval", "sft_step", "grpo_rollout", "grpo_train", "grpo_periodic_eval"}
        assert p["merge"]["engine"] == p["merge"]["plan"]  # on CPU both follow the CPU rule
        assert p["step_s"] > 0
    assert report["tests"]["exit_code"] in (0, 5) and report["tests"]["counts"].get("skipped", 0) >= 10
    assert not report["tests"]["failed"]
    assert {c["merge"] for c in report["rollout"]} == {"merged", "unmerged"}
    printed = capsys.readouterr().out
    assert "r1lite GPU check" in printed and "grpo_periodic_eval" in printed and "pytest -m cuda" in printed


def test_reward_fuzzer_finds_no_exception(capsys):
    """bench/fuzz_rewards.py on 2,000 seeded random and hostile completions: every reward returns a number.

    (Latency is the bench's business, not the suite's: `python bench/fuzz_rewards.py` reports it.)"""
    path = Path(__file__).resolve().parent.parent / "bench" / "fuzz_rewards.py"
    spec = importlib.util.spec_from_file_location("bench_fuzz_rewards", path)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    report = fuzz.main(["--n", "2000", "--json"])
    assert report["errors"] == 0, {k: v for k, v in report["rewards"].items() if v["errors"]}
    assert len(report["rewards"]) >= 6 * 3  # Countdown's and five reasoning-gym tasks' rewards
