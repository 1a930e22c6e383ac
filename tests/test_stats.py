"""The statistics every comparison goes through, against answers known in advance."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lite.stats import detectable_difference, interval, nested_interval, paired_difference


def test_an_interval_around_a_known_share_covers_it_at_about_the_stated_rate():
    """Draw 256 problems at a true accuracy of 15 % many times: the 95 % interval covers 15 % ~95 % of the time."""
    rng = random.Random(1)
    covered = 0
    trials = 200
    for t in range(trials):
        sample = [float(rng.random() < 0.15) for _ in range(256)]
        ci = interval(sample, seed=t)
        covered += ci.low <= 0.15 <= ci.high
    assert 0.89 <= covered / trials <= 0.99
    width = interval([1.0] * 38 + [0.0] * 218).high - interval([1.0] * 38 + [0.0] * 218).low
    assert 0.07 < width < 0.10  # about +-4 points at 15 % of 256


def test_a_paired_difference_built_in_is_found_and_a_null_one_is_not():
    before = [0.0] * 200 + [1.0] * 56
    fixed = [1.0] * 30 + [0.0] * 170 + [1.0] * 56  # 30 fixed, none broken: +11.7 pt
    ci = paired_difference(before, fixed)
    assert ci.estimate == pytest.approx(30 / 256) and ci.excludes_zero and ci.low > 0.05
    swapped = [1.0] * 10 + [0.0] * 190 + [0.0] * 10 + [1.0] * 46  # 10 fixed, 10 broken: no change
    null = paired_difference(before, swapped)
    assert null.estimate == 0 and not null.excludes_zero
    with pytest.raises(ValueError, match="not the same problems"):
        paired_difference([1.0], [1.0, 0.0])


def test_pairing_is_what_makes_a_small_gain_visible():
    """The same +4 pt from 10 fixed problems: significant when paired, lost in the noise of two separate samples."""
    before = [0.0] * 210 + [1.0] * 46
    after = [1.0] * 10 + [0.0] * 200 + [1.0] * 46
    assert paired_difference(before, after).excludes_zero
    assert interval(after).low < interval(before).high  # the unpaired intervals overlap


def test_nested_interval_widens_with_seed_to_seed_spread():
    same = [[1.0] * 40 + [0.0] * 216] * 3
    spread = [[1.0] * 20 + [0.0] * 236, [1.0] * 40 + [0.0] * 216, [1.0] * 60 + [0.0] * 196]
    a, b = nested_interval(same), nested_interval(spread)
    assert a.estimate == pytest.approx(b.estimate)
    assert (b.high - b.low) > 1.5 * (a.high - a.low)


def test_detectable_difference_shrinks_with_problems_and_seeds():
    one = detectable_difference(256, 0.15)
    assert 0.08 < one < 0.10  # two runs of 256 problems at 15 %: ~9 pt
    assert detectable_difference(1024, 0.15) == pytest.approx(one / 2, rel=0.01)
    assert detectable_difference(256, 0.15, runs=4) == pytest.approx(one / 2, rel=0.01)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=60))
def test_the_estimate_sits_inside_its_interval(values):
    ci = interval(values)
    assert ci.low <= ci.estimate <= ci.high and ci.low >= 0 and ci.high <= 1


def test_a_difference_between_configs_with_several_seeds():
    """Config A fixes 20 more of 256 problems than config B in every seed: found, about +7.8 pt; equal configs: not."""
    from r1lite.stats import paired_runs_difference

    base = [1.0] * 40 + [0.0] * 216
    better = [1.0] * 60 + [0.0] * 196
    ci = paired_runs_difference([better, better, better], [base, base, base])
    assert ci.estimate == pytest.approx(20 / 256) and ci.excludes_zero
    rng = random.Random(0)
    noisy = [[float(rng.random() < 0.2) for _ in range(256)] for _ in range(3)]
    same = paired_runs_difference(noisy, [list(r) for r in reversed(noisy)])
    assert same.estimate == pytest.approx(0) and not same.excludes_zero
    with pytest.raises(ValueError, match="the same problems"):
        paired_runs_difference([[1.0, 0.0]], [[1.0]])
