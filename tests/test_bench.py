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
