"""How fast this CPU multiplies: measured once, in a few seconds, so `r1lite plan` times a CPU run for this machine.

    >>> speed = cpu_speed(bf16=False)     # GEMM GFLOP/s at a decode step's rows and at a training batch's, op cost
    >>> speed.gflops(rows=128), speed.op_us

CPUs differ by far more than their core count says: the same 2-core VM class runs fp32 matrix products at 30-60
GFLOP/s on one host and twice that on another, and bf16 only where the CPU has AVX512-BF16 or AMX. The planner's
CPU figures are this measurement times counted FLOPs and operations, not one machine's timings scaled. Cached per
CPU model, torch version, thread count and dtype in $R1LITE_CACHE/cpu-speed.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from r1lite.fileio import write_json

SMALL, LARGE = 32, 512  # rows of the two measured products: a decode step's batch, a training micro-batch's tokens
IN, OUT = 576, 1536  # the products' inner and outer sizes (SmolLM2-135M's MLP, the CPU profiles' model)


@dataclass(frozen=True)
class CpuSpeed:
    """GEMM throughput at SMALL and LARGE rows and the cost of one eager PyTorch operation on this machine."""

    small: float  # GFLOP/s at SMALL rows
    large: float  # GFLOP/s at LARGE rows
    op_us: float  # microseconds of one small eager operation (dispatch, not arithmetic)
    dtype: str
    source: str

    def gflops(self, rows: int) -> float:
        """Throughput at `rows` rows, log-linear between the two measurements and flat outside them."""
        if rows <= SMALL:
            return self.small
        if rows >= LARGE:
            return self.large
        share = math.log(rows / SMALL) / math.log(LARGE / SMALL)
        return self.small + share * (self.large - self.small)


_MEASURED: dict[str, CpuSpeed] = {}


def cpu_speed(bf16: bool = False) -> CpuSpeed:
    """This machine's speed in the dtype a CPU run computes in (measured once per process, cached on disk)."""
    import torch

    dtype = "bfloat16" if bf16 else "float32"
    key = f"{_cpu_model()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{dtype}"
    if key in _MEASURED:
        return _MEASURED[key]
    path = _cache_file()
    cached = _read(path)
    if key in cached:
        speed = CpuSpeed(**cached[key])
    else:
        speed = _measure(getattr(torch, dtype), key)
        cached[key] = asdict(speed)
        _write(path, cached)
    _MEASURED[key] = speed
    return speed


def _measure(dtype: object, key: str) -> CpuSpeed:
    import torch

    weight = torch.randn(OUT, IN).to(dtype)

    def rate(rows: int) -> float:
        x = torch.randn(rows, IN).to(dtype)
        torch.nn.functional.linear(x, weight)  # warm-up
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.6:
            torch.nn.functional.linear(x, weight)
            runs += 1
        return 2 * rows * IN * OUT * runs / (time.perf_counter() - start) / 1e9

    a = torch.ones(8)
    start, n = time.perf_counter(), 3000
    for _ in range(n):
        a = a + 1
    op_us = (time.perf_counter() - start) / n * 1e6
    day = time.strftime("%Y-%m-%d")
    return CpuSpeed(rate(SMALL), rate(LARGE), op_us, str(dtype).removeprefix("torch."), f"measured here {day}: {key}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _cache_file() -> Path:
    return Path(os.environ.get("R1LITE_CACHE") or Path.home() / ".cache" / "r1lite") / "cpu-speed.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only home: the measurement is simply not kept
        write_json(path, data)
