"""bench/rollout.py measures each backend on its own: nothing one backend leaves behind counts in the next one's
peak (issue 30: the previous policy, its compiled decode step and the CUDA-graph pool it captured into)."""

from __future__ import annotations

import importlib.util
import sys
import weakref
from pathlib import Path

import pytest
import torch


def load_bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "rollout.py"
    spec = importlib.util.spec_from_file_location("bench_rollout", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_rollout"] = bench
    spec.loader.exec_module(bench)
    return bench


class Policy:
    """Stands in for a backend's trainer and model, which sit in reference cycles (callbacks, wrapped methods)."""

    def __init__(self) -> None:
        self.me = self


def test_each_backend_starts_after_the_previous_one_is_freed(monkeypatch):
    """Between backends: compiled state reset, reference cycles collected, the allocator's cache emptied and the
    peak zeroed (CUDA modelled: the calls are recorded)."""
    bench = load_bench()
    events: list[str] = []
    left: list[weakref.ref] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: events.append("reset_peak"))
    monkeypatch.setattr(torch._dynamo, "reset", lambda: events.append("dynamo_reset"))
    monkeypatch.setattr(bench, "build_model", lambda shape, folder, dtype: folder)
    monkeypatch.setattr(bench, "versions", lambda: {})

    def run_backend(backend, model_dir, args):
        alive = [ref for ref in left if ref() is not None]
        events.append(f"{backend} ({len(alive)} earlier policies alive)")
        left.append(weakref.ref(Policy()))
        return {"completion_tokens_per_s": 1.0, "step_s_median": 1.0}

    monkeypatch.setattr(bench, "run_backend", run_backend)
    bench.main(["--backends", "engine,trl", "--steps", "1", "--in-process"])
    reset = ["dynamo_reset", "empty_cache", "reset_peak"]
    assert events == [*reset, "engine (0 earlier policies alive)", *reset, "trl (0 earlier policies alive)", *reset]


@pytest.mark.cuda
def test_each_backend_starts_from_the_same_gpu_memory(monkeypatch):
    """On a GPU: a backend after the captured engine starts with what one after stock TRL did, with a zeroed peak.

    (The first backend is not compared: cuBLAS keeps its workspace, allocated by the first matmul, for good.)"""
    bench = load_bench()
    seen: list[tuple[int, int]] = []
    run = bench.run_backend

    def measured(backend, model_dir, args):
        seen.append((torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()))
        return run(backend, model_dir, args)

    monkeypatch.setattr(bench, "run_backend", measured)
    bench.main(
        ["--shape", "tiny", "--steps", "2", "--tokens", "8", "--backends", "trl,engine,engine-eager", "--in-process"]
    )
    assert len(seen) == 3 and seen[1][0] == seen[2][0], seen
    assert all(peak == allocated for allocated, peak in seen), seen


def test_each_backend_runs_in_a_process_of_its_own_and_the_json_is_written_after_each(monkeypatch, tmp_path):
    """By default a backend runs in a child process (the engine's registered attention never meets continuous
    batching), one that outlives --backend-timeout is recorded as such, and --out holds every finished backend
    as soon as it finishes (a run cut off keeps them)."""
    import json
    import subprocess

    bench = load_bench()
    monkeypatch.setattr(bench, "build_model", lambda shape, folder, dtype: folder)
    monkeypatch.setattr(bench, "versions", lambda: {})
    out, seen = tmp_path / "r.json", []

    def child(command, **kwargs):
        backend = command[command.index("--child-backend") + 1]
        seen.append((backend, kwargs["timeout"], json.loads(out.read_text()) if out.is_file() else None))
        if backend == "trl-cb":
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        part = Path(command[command.index("--child-out") + 1])
        rate = {"engine": 300.0, "trl": 100.0}[backend]
        part.write_text(json.dumps({"backend": backend, "completion_tokens_per_s": rate, "step_s_median": 1e3 / rate}))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", child)
    [case] = bench.main(["--backends", "trl,trl-cb,engine", "--backend-timeout", "60", "--out", str(out)])
    assert [b for b, _, _ in seen] == ["trl", "trl-cb", "engine"] and {t for _, t, _ in seen} == {60}
    assert seen[1][2][0]["results"]["trl"]["completion_tokens_per_s"] == 100.0  # written before the next began
    assert case["results"]["trl-cb"] == {"backend": "trl-cb", "error": "did not finish in 60 s"}
    assert case["throughput_ratio"] == 3.0 and "throughput_ratio_vs_cb" not in case
    assert case["weights"] == "random (published shape)"
    assert json.loads(out.read_text())[0]["results"]["engine"]["completion_tokens_per_s"] == 300.0
