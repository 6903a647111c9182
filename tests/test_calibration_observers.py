"""Observer math: MinMax, Percentile, histogram merging, TensorRT's entropy threshold, per-channel weights."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from hadmc_deploy.calibration.observers import (
    AbsHistogram,
    EntropyObserver,
    MinMaxObserver,
    PercentileObserver,
    entropy_threshold,
    make_observer,
    per_channel_weight_amax,
)


def _reference_entropy_amax(hist: np.ndarray, edges: np.ndarray, start_bin: int = 128) -> float:
    """Loop-for-loop port of NVIDIA pytorch-quantization's `_compute_amax_entropy` (TensorRT's algorithm)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    total = np.sum(bins)
    divergences, arguments = [], []
    nbins = 128
    for i in range(start_bin, len(bins) + 1):
        counts = np.zeros(nbins)
        space = np.linspace(0, i, num=nbins + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        for idx, d in enumerate(digitized):
            if d != -1:
                counts[d] += bins[idx]
        for key, val in Counter(digitized).items():
            if key != -1:
                counts[key] = counts[key] / val
        new = np.zeros(i)
        for idx, d in enumerate(digitized):
            if d != -1:
                new[idx] = counts[d]
        ref = np.array(bins[:i])
        ref[-1] += np.sum(bins[i:])
        assert round(ref.sum()) == round(total)
        divergences.append(scipy_entropy(ref / ref.sum(), new / new.sum()))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(edges[last_argmin + start_bin])


def test_minmax_tracks_extremes_across_batches():
    obs = MinMaxObserver()
    obs.observe(np.array([-1.0, 2.0], np.float32))
    obs.observe(np.array([-3.5, 0.5], np.float32))
    assert obs.amax() == 3.5
    assert (obs.stats.min, obs.stats.max, obs.stats.count) == (-3.5, 2.0, 4)


def test_percentile_clips_the_rare_tail():
    x = np.concatenate([np.linspace(-1, 1, 99_990), np.full(10, 50.0)]).astype(np.float32)
    obs = PercentileObserver(99.9)
    obs.observe(x)
    assert 0.95 <= obs.amax() <= 1.1  # the 10 outliers (0.01%) fall beyond the 99.9th percentile
    assert make_observer("minmax").__class__ is MinMaxObserver
    with pytest.raises(ValueError):
        make_observer("kl")


def test_histogram_range_doubling_is_exact():
    hist = AbsHistogram(num_bins=8)
    hist.add(np.array([0.1, -0.9], np.float32))  # range 0.9
    hist.add(np.array([3.0], np.float32))  # range 0.9 -> 1.8 -> 3.6: pairs of bins merge twice
    assert hist.range == pytest.approx(3.6)
    assert hist.counts.sum() == 3
    # 0.9 sat on the old top edge (inclusive), so it stays in the bin below 0.9
    direct, _ = np.histogram([0.1, 0.899, 3.0], bins=8, range=(0, 3.6))
    assert np.array_equal(hist.counts, direct)


@pytest.mark.parametrize("dist", ["gauss", "laplace", "relu"])
def test_entropy_matches_reference_port(dist):
    rng = np.random.default_rng(1)
    x = {"gauss": rng.standard_normal(20_000), "laplace": rng.laplace(size=20_000), "relu": np.maximum(rng.standard_normal(20_000), 0)}[dist]
    hist, edges = np.histogram(np.abs(x), bins=256, range=(0, np.abs(x).max()))
    ours = entropy_threshold(hist.astype(np.float64), edges)
    assert ours == pytest.approx(_reference_entropy_amax(hist, edges), rel=1e-9)


def test_entropy_clips_outliers_but_not_a_uniform():
    rng = np.random.default_rng(0)
    gauss = np.concatenate([rng.standard_normal(200_000), rng.uniform(-30, 30, 20)]).astype(np.float32)
    obs = EntropyObserver()
    for chunk in np.array_split(gauss, 4):
        obs.observe(chunk)
    assert 3.0 < obs.amax() < 0.25 * np.abs(gauss).max()  # well below the outlier max, above the bulk
    plain = EntropyObserver()
    plain.observe(rng.standard_normal(200_000).astype(np.float32))
    assert plain.amax() < plain.stats.absmax
    uniform = EntropyObserver()
    uniform.observe(rng.uniform(-1, 1, 200_000).astype(np.float32))
    assert uniform.amax() > 0.98


def test_entropy_close_to_onnxruntime_on_symmetric_data():
    # ORT histograms signed values (4096 bins = 2048 per side, 256 levels = 128 per side):
    # comparable to TensorRT's |x| histogram for symmetric data, not identical.
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(2)
    x = rng.laplace(size=200_000).astype(np.float32)  # ORT's loop is slow: one distribution
    collector = HistogramCollector("entropy", True, 4096, 256, None, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect({"t": [x]})
        ort_amax = float(collector.compute_collection_result()["t"][1])
    obs = EntropyObserver()
    obs.observe(x)
    assert obs.amax() == pytest.approx(ort_amax, rel=0.2)


def test_per_channel_weight_amax_axis0():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0, 1] = -4.0
    w[1, 0] = 0.5
    w[2, 1] = 2.0
    assert per_channel_weight_amax(w).tolist() == [4.0, 0.5, 2.0]
