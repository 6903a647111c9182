"""Timed samples: a number of runs and at least a stretch of time (hadmc_deploy.timing)."""

from __future__ import annotations

import time

import pytest

from hadmc_deploy.timing import MAX_TIMED_RUNS, WHOLE_MODEL_ROUNDS, expected_fastest, runs_for, timed_samples


def test_runs_then_the_stretch():
    calls = []
    fast = timed_samples(lambda: calls.append(1), runs=5)
    assert len(fast) == len(calls) == 5  # no stretch asked: exactly the runs
    started = time.perf_counter()
    stretched = timed_samples(lambda: time.sleep(0.001), runs=2, min_seconds=0.03)
    assert time.perf_counter() - started >= 0.03 and len(stretched) >= 5
    assert all(ms >= 0.9 for ms in stretched)  # ms per call, not seconds
    slow = timed_samples(lambda: time.sleep(0.02), runs=3, min_seconds=0.01)
    assert len(slow) == 3  # slow calls outlast the stretch: never fewer than the runs asked


def test_the_cap_holds_however_fast_the_call():
    assert len(timed_samples(lambda: None, runs=1, min_seconds=60.0, max_runs=50)) == 50
    assert len(timed_samples(lambda: None, runs=80, min_seconds=60.0, max_runs=50)) == 80  # the runs asked come first


def test_runs_for_fills_the_stretch():
    assert runs_for(0.04, 1.0, 5) == 40
    assert runs_for(0.04, 100.0, 5) == 5
    assert runs_for(0.0, 1.0, 5) == 5
    assert runs_for(10.0, 0.001, 5) == MAX_TIMED_RUNS


def test_expected_fastest_is_the_average_fastest_of_every_subset() -> None:
    """The U-statistic equals the brute-force average over every 7-subset; with 7 rounds (or fewer)
    it is their fastest; more rounds of the same distribution estimate the same thing."""
    import itertools
    import random
    import statistics

    rng = random.Random(0)
    values = [rng.uniform(1.0, 2.0) for _ in range(11)]
    brute = statistics.fmean(min(c) for c in itertools.combinations(values, WHOLE_MODEL_ROUNDS))
    assert expected_fastest(values) == pytest.approx(brute, rel=1e-12)
    assert expected_fastest(values[:7]) == min(values[:7]) and expected_fastest(values[:2]) == min(values[:2])
    assert min(values) <= expected_fastest(values) <= statistics.median(values)
    with pytest.raises(ValueError):
        expected_fastest([])
