"""Statistics for small experiments: how sure a number is, and how big a difference could be noticed at all.

    >>> interval(correct)                                  # accuracy with a 95 % bootstrap interval
    >>> paired_difference(before, after)                   # after - before on the same problems, with its interval
    >>> nested_interval([[...run 1...], [...run 2...]])     # over seeds and problems (runs x problems)
    >>> paired_runs_difference(config_a, config_b)          # two configs, several seeds each, same problems
    >>> detectable_difference(n=256, p=0.15)               # the smallest gain this test size can show

Small-scale RL results are noisy: the same recipe with another seed moves held-out accuracy by a point
or more, and 256 problems leave a 95 % interval of about +-4 points around 15 %. Every comparison r1lite
reports (demo-rl, the report, runs compare, sweeps) goes through these functions, so it is said once how
sure a number is. Percentile bootstrap intervals: no normality assumed, exact for the resampling they
describe, and cheap at these sizes (numpy, 10,000 resamples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the functions import numpy themselves
    import numpy as np

RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int  # problems (or problems x runs) behind the estimate
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}

    def points(self) -> str:
        """'+3.1 pt [+0.4, +5.9]' for shares (0-1)."""
        return f"{self.estimate * 100:+.1f} pt [{self.low * 100:+.1f}, {self.high * 100:+.1f}]"


def _percentiles(samples: object, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def interval(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> Interval:
    """The mean of `values` (e.g. 1/0 per problem) with a percentile bootstrap interval over them."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("no values to summarise")
    means = _resampled_means(data, np.random.default_rng(seed))
    return Interval(float(data.mean()), *_percentiles(means, confidence), data.size, confidence)


def paired_difference(
    before: Sequence[float], after: Sequence[float], confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of after - before on the same problems, resampling problems (pairs stay together)."""
    if len(before) != len(after):
        raise ValueError(f"paired samples differ in length ({len(before)} vs {len(after)}): not the same problems")
    return interval([a - b for a, b in zip(after, before, strict=True)], confidence, seed)


def nested_interval(runs: Sequence[Sequence[float]], confidence: float = 0.95, seed: int = 0) -> Interval:
    """The mean over runs (seeds) of each run's mean over problems, resampling runs and then problems in each.

    Both sources of noise count: which seeds were run, and which problems were drawn. With one run it is
    `interval` over its problems.
    """
    import numpy as np

    data = [np.asarray(r, dtype=float) for r in runs]
    if not data or any(r.size == 0 for r in data):
        raise ValueError("every run needs at least one value")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(RESAMPLES, len(data)))
    # slot j of resample b holds run picks[b, j] resampled over its problems: each run's resampled means are drawn
    # for every slot (independent draws, as a loop would make them) and each slot keeps its picked run's
    slots = np.empty((RESAMPLES, len(data)))
    for j in range(len(data)):
        means = np.stack([_resampled_means(r, rng) for r in data], axis=1)  # resamples x runs
        slots[:, j] = means[np.arange(RESAMPLES), picks[:, j]]
    estimate = float(np.mean([r.mean() for r in data]))
    return Interval(estimate, *_percentiles(slots.mean(axis=1), confidence), sum(r.size for r in data), confidence)


def _resampled_means(values: np.ndarray, rng: np.random.Generator, chunk: int = 1_000) -> np.ndarray:
    """RESAMPLES bootstrap means of `values` (1-d), drawn in chunks so memory stays small."""
    import numpy as np

    out = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, chunk):
        picks = rng.integers(0, values.size, size=(min(chunk, RESAMPLES - start), values.size))
        out[start : start + len(picks)] = values[picks].mean(axis=1)
    return out


def paired_runs_difference(
    a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of config `a` minus config `b`, each given as runs (seeds) x the same problems.

    Each resample draws the problems once for both configs (the pairing: the same problems are hard for
    both) and each config's seeds on their own, so the interval covers both which problems were drawn
    and which seeds were run. One run per side is `paired_difference`.
    """
    import numpy as np

    left, right = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if left.ndim != 2 or right.ndim != 2 or left.shape[1] != right.shape[1] or left.shape[1] == 0:
        raise ValueError("both configs need runs x the same problems (equal, non-zero numbers of problems)")
    rng = np.random.default_rng(seed)
    n = left.shape[1]
    estimates = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, chunk := 500):  # chunks: a resample is seeds x problems values per side
        size = min(chunk, RESAMPLES - start)
        problems = rng.integers(0, n, size=(size, 1, n))
        seeds_a = rng.integers(0, left.shape[0], size=(size, left.shape[0], 1))
        seeds_b = rng.integers(0, right.shape[0], size=(size, right.shape[0], 1))
        estimates[start : start + size] = left[seeds_a, problems].mean(axis=(1, 2)) - right[seeds_b, problems].mean(
            axis=(1, 2)
        )
    estimate = float(left.mean() - right.mean())
    return Interval(estimate, *_percentiles(estimates, confidence), n, confidence)


def detectable_difference(n: int, p: float, runs: int = 1, confidence: float = 0.95, power: float = 0.8) -> float:
    """The smallest true difference in accuracy between two configs that a comparison of `runs` runs each on
    `n` problems detects with `power` (two-sided, normal approximation, independent samples at accuracy `p`).

    A difference smaller than this can be real and still not show; a reported +2 pt below it says nothing.
    """
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2) + NormalDist().inv_cdf(power)
    p = min(max(p, 1 / (2 * n)), 1 - 1 / (2 * n))  # a share of 0 or 1 still has sampling noise
    return z * math.sqrt(2 * p * (1 - p) / (n * runs))
