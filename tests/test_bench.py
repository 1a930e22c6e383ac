"""The benchmarks' harnesses run end to end on CPU (smoke tests: no speed is asserted)."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
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
    argv = ["--shape", "tiny", "--steps", "2", "--tokens", "8", "--out", str(out), "--in-process", "--merge", "merged"]
    [result] = bench.main(argv)
    assert set(result["results"]) == {"trl", "engine"}
    for backend in result["results"].values():
        assert backend["tokens_per_generation"] == 2 * 2 * 8  # EOS disabled: every completion full length
        assert len(backend["step_s_all"]) == 2 and len(backend["generation_s_all"]) == 2  # each step timed
    engine, trl = result["results"]["engine"], result["results"]["trl"]
    ratio = engine["completion_tokens_per_s"] / trl["completion_tokens_per_s"]
    assert result["throughput_ratio"] == round(ratio, 2) and engine["merged"] == 1.0  # --merge merged reached it
    import json

    assert json.loads(out.read_text())[0]["results"] == result["results"]


def test_decode_bench_smoke(tmp_path):
    """bench/decode.py times the three decode variants and the matmul bound on a tiny model (no speed asserted)."""
    from r1lite.train.tiny import build_tiny_model

    path = Path(__file__).resolve().parent.parent / "bench" / "decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = build_tiny_model(tmp_path / "m", hidden=64, layers=2)
    [row] = bench.main(["--model", str(model), "--rows", "16", "--prompt", "8", "--tokens", "6", "--dtypes", "float32"])
    assert row["dtype"] == "float32" and all(row[k] > 0 for k in ("before_ms", "sampler_ms", "now_ms", "matmuls_ms"))


GPU_CHECK = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", GPU_CHECK)
    check = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_check"] = check  # its dataclasses look their module up
    spec.loader.exec_module(check)
    return check


def _gpu_profile():
    path = GPU_CHECK.parent / "gpu_profile.py"
    spec = importlib.util.spec_from_file_location("bench_gpu_profile", path)
    profile = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu_profile"] = profile
    spec.loader.exec_module(profile)
    return profile


def test_gpu_check_starts_a_part_only_when_the_time_it_needs_remains(tmp_path, monkeypatch, capsys):
    """Within a 5 s budget only env fits: tests, rollout and every profile are skipped with their need, in the
    JSON that is written even so."""
    monkeypatch.delenv("OUT", raising=False)
    check, out = _gpu_check(), tmp_path / "gpu.json"
    report = check.main(["--dry-run", "--budget-s", "5", "--out", str(out)])
    assert [p["name"] for p in report["parts"]] == ["env"] and report["env"]["pip_list"]
    assert set(report["skipped"]) == {"tests", "rollout", *check.PROFILES}
    assert all(why.startswith("budget: needs") for why in report["skipped"].values())
    assert json.loads(out.read_text()) == report and report["finished"] is True
    assert "skipped gpu-16gb: budget" in capsys.readouterr().out


def test_gpu_check_judges_fit_from_peak_allocated_and_the_measured_context():
    """Fits = peak allocated x the plan's allocator factor + the CUDA context its process held <= the card; a cap
    at the card less the plan's context cannot tell that on its own."""
    judge_fit, gib = _gpu_profile().judge_fit, 2**30
    assert judge_fit(12 * gib, int(1.2 * gib), 15.6)  # 12.6 + 1.2
    assert not judge_fit(14 * gib, int(1.2 * gib), 15.6)  # 14.7 + 1.2: the allocator's share alone fits
    assert not judge_fit(13 * gib, int(2.0 * gib), 15.6)  # 13.65 + 2.0: a context larger than planned


@pytest.mark.slow
def test_gpu_check_dry_run_writes_each_part_as_it_finishes(tmp_path):
    """`python bench/gpu_check.py --dry-run` in its own process, stopped (SIGKILL) once a profile has finished: the
    JSON on disk was valid after every part, grew in the order env, tests, rollout, profiles, and holds every part
    that finished, with the numbers the GPU run would fill in."""
    out = tmp_path / "gpu.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    command = [sys.executable, str(GPU_CHECK), "--dry-run", "--profiles", "gpu-16gb,gpu-24gb", "--out", str(out)]
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    seen: list[list[str]] = []
    stages: list[list[str]] = []  # the first profile's stages as the JSON held them, stage by stage
    backends: list[list[str]] = []  # the rollout's backends as the JSON held them while the part ran
    try:
        deadline = time.monotonic() + 1200
        while proc.poll() is None and time.monotonic() < deadline:
            if out.is_file():
                report = json.loads(out.read_text())  # never half a file
                names = [p["name"] for p in report["parts"]]
                if not seen or names != seen[-1]:
                    seen.append(names)
                done = list(report.get("rollout", {}).get("results", {}))
                if done and (not backends or done != backends[-1]):
                    backends.append(done)
                current = list((report.get("profiles") or [{}])[0].get("stages", {}))
                if current and (not stages or current != stages[-1]):
                    stages.append(current)
                if "gpu-16gb" in names:
                    break
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the check and the profile process it started
        proc.wait()
        log.close()
    order = ["env", "tests", "rollout", "gpu-16gb", "gpu-24gb"]
    assert all(names == order[: len(names)] for names in seen), seen
    report = json.loads(out.read_text())
    tail = (tmp_path / "log").read_text()[-3000:]
    assert [p["name"] for p in report["parts"]][:4] == order[:4] and "finished" not in report, tail
    assert report["tests"]["exit_code"] in (0, 5) and report["tests"]["counts"].get("skipped", 0) >= 10
    assert not report["tests"]["failed"] and report["tests"]["command"].split(" -v ")[1].startswith(
        "tests/test_rollout.py "
    )
    assert backends[-1] == ["engine-eager", "trl", "engine"] and len(backends) >= 2  # eager first, each as it ended
    assert report["rollout"]["weights"] == "random (published shape)"
    assert all("completion_tokens_per_s" in r for r in report["rollout"]["results"].values()), report["rollout"]
    # stages reached the JSON as they ended (the check forwards the profile's file once a second: tiny stages
    # may share a forward, so some intermediate states, never the order, can be missed)
    assert stages and stages[0][0] == "eval" and len(stages[0]) < 5, stages  # on disk before the profile ended
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(stages)), stages  # grown in order
    [profile] = report["profiles"]
    assert "error" not in profile and profile["finished"], profile
    assert profile["model"] == "Qwen/Qwen3-1.7B-Base" and profile["card"] == "16 GB (RTX 4060 Ti)"
    assert profile["weights"] == "random (published shape)"
    assert set(profile["stages"]) == {"eval", "sft_step", "grpo_rollout", "grpo_train", "grpo_periodic_eval"}
    assert profile["merge"]["engine"] is False  # the engine's CPU rule (NF4 decodes unmerged) reached the report
    assert profile["fits_card"] is None  # no CUDA: nothing measured to judge


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
