"""Range observers: from a stream of activation batches to one clipping threshold (amax).

Three methods, each a small class with `observe(batch)` and `amax()`:

* `MinMaxObserver` - the largest |x| seen; never clips, wastes resolution on outliers.
* `PercentileObserver` - the given percentile of |x| over a 2048-bin histogram.
* `EntropyObserver` - TensorRT's EntropyCalibration2: the threshold whose 128-level
  quantization of the |x| histogram loses the least information (KL divergence),
  kept only where it cuts a tail, not the bulk (see `guarded_entropy_threshold`).

Histograms keep a fixed 2048 bins over [0, range]. When a later batch exceeds the
range we double it (merging bin pairs, exact) instead of re-histogramming, so one
pass over the data suffices and memory stays constant; TensorRT's calibrator does
the same job with a first pass for the range, which would double calibration time.

Also here: `per_channel_weight_amax`, the symmetric per-output-channel (axis 0)
weight scales every INT8 form uses.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

NUM_BINS = 2048  # TensorRT's histogram size
NUM_QUANTIZED_BINS = 128  # int8: 127 positive levels + zero
DEFAULT_PERCENTILE = 99.99
#: An entropy threshold cuts a tail; one that clips more than this share of a tensor's
#: values is the degenerate KL case (see guarded_entropy_threshold).
MAX_ENTROPY_CLIPPED = 0.05
#: |x| values binned per step: their scaled copy and indices stay in a core's cache instead of
#: allocating (and faulting in) 8 bytes of indices per value of the whole batch.
CHUNK = 1 << 18


class Observer(Protocol):
    def observe(self, batch: np.ndarray) -> None: ...

    def amax(self) -> float: ...


class _Stats:
    """Exact min/max/count, shared by every observer (scales.json records them)."""

    def __init__(self) -> None:
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0

    def update(self, batch: np.ndarray) -> float:
        """Fold `batch` in; returns its own largest |x| (0 when empty), which the histogram needs too."""
        if not batch.size:
            return 0.0
        low, high = float(batch.min()), float(batch.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += int(batch.size)
        return max(abs(low), abs(high))

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0


class MinMaxObserver:
    def __init__(self) -> None:
        self.stats = _Stats()

    def observe(self, batch: np.ndarray) -> None:
        self.stats.update(batch)

    def amax(self) -> float:
        return self.stats.absmax


class AbsHistogram:
    """A 2048-bin histogram of |x| over [0, range] whose range doubles as needed."""

    def __init__(self, num_bins: int = NUM_BINS) -> None:
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.float64)
        self.range = 0.0

    def add(self, batch: np.ndarray, top: float | None = None) -> None:
        """Count |batch|; `top` is its largest |x| when the caller knows it already (saves a pass)."""
        flat = batch.ravel()
        if flat.size == 0:
            return
        top = max(abs(float(flat.min())), abs(float(flat.max()))) if top is None else top
        if self.range == 0.0:
            if top == 0.0:
                self.counts[0] += flat.size
                return
            self.range = top
        while top > self.range:
            # Doubling the range merges bin pairs exactly; no counts move between bins.
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(1), np.zeros(self.num_bins // 2)])
            self.range *= 2.0
        # Index arithmetic and bincount, not np.histogram (float64 and ~10 passes: 45% of a ResNet-18's
        # calibration at 224); a value within float32 rounding of an edge may land in the next bin,
        # below what a threshold resolves. intp indices (bincount widens narrower ones, 3x slower),
        # a chunk at a time in cache-resident buffers, the top value (index num_bins) folded into the
        # last bin after counting: 2.3-2.4x faster on 16-image batches, 1.2x on one (scratch /tmp/exp15_hist2.py).
        scale = np.float32(self.num_bins / self.range)
        size = min(flat.size, CHUNK)
        scaled = np.empty(size, dtype=np.float64 if flat.dtype == np.float64 else np.float32)
        index = np.empty(size, dtype=np.intp)
        counts = np.zeros(self.num_bins + 1, dtype=np.int64)
        for at in range(0, flat.size, CHUNK):
            part = flat[at : at + CHUNK]
            buf, idx = scaled[: part.size], index[: part.size]
            np.abs(part, out=buf, casting="unsafe")
            np.multiply(buf, scale, out=buf)
            idx[...] = buf
            counts += np.bincount(idx, minlength=self.num_bins + 1)
        counts[self.num_bins - 1] += counts[self.num_bins :].sum()
        self.counts += counts[: self.num_bins]

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, self.range, self.num_bins + 1)


class HistogramObserver:
    """Exact |x| extremes plus a 2048-bin |x| histogram: every method's threshold from one pass."""

    def __init__(self) -> None:
        self.stats = _Stats()
        self.hist = AbsHistogram()

    def observe(self, batch: np.ndarray) -> None:
        self.hist.add(batch, top=self.stats.update(batch))

    def amax_by_method(self, percentile: float = DEFAULT_PERCENTILE) -> dict[str, float]:
        """The threshold each method would choose, from the same histogram (what "auto" picks among)."""
        entropy = guarded_entropy_threshold(self.hist, self.stats.absmax)
        pct = percentile_threshold(self.hist.counts, self.hist.edges, percentile, self.stats.absmax)
        return {"entropy": float(entropy), "percentile": float(pct), "minmax": float(self.stats.absmax)}


class PercentileObserver(HistogramObserver):
    def __init__(self, percentile: float = DEFAULT_PERCENTILE) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__()
        self.percentile = percentile

    def amax(self) -> float:
        return percentile_threshold(self.hist.counts, self.hist.edges, self.percentile, self.stats.absmax)


class EntropyObserver(HistogramObserver):
    def amax(self) -> float:
        return guarded_entropy_threshold(self.hist, self.stats.absmax)

    def amax_kl_only(self) -> float:
        """TensorRT's EntropyCalibration2 threshold alone, without the clipping check."""
        return 0.0 if self.hist.range == 0.0 else min(entropy_threshold(self.hist.counts, self.hist.edges), self.stats.absmax)


def guarded_entropy_threshold(hist: AbsHistogram, absmax: float) -> float:
    """The KL threshold, unless it clips more than MAX_ENTROPY_CLIPPED of the values (then |x| max).

    Why the check: KL compares the SHAPES of the clipped and the quantized histograms,
    so it never sees how far clipped values move. A tensor whose values stay away from
    zero (hardsigmoid gates near 0.5, SE means) has empty low bins; the candidate that
    ends at its first occupied bin folds all the mass into that one bin, P equals Q
    there, KL is 0 and wins: every value is clipped to the tensor's minimum. Measured on
    a MobileNetV3-style digits model (tools/bench_int8.py): those thresholds clipped
    99.95-100% of their tensors' values while every healthy entropy threshold clipped
    under 0.6%; with the SE gates clipped to a constant, INT8 fell from 98.9% to 54.2%.
    """
    if hist.range == 0.0:
        return 0.0
    kl = min(entropy_threshold(hist.counts, hist.edges), absmax)
    if clipped_fraction(hist, kl) > MAX_ENTROPY_CLIPPED:
        return absmax
    return kl


def clipped_fraction(hist: AbsHistogram, threshold: float) -> float:
    """Share of the histogram's values above `threshold` (whole bins; the bin holding it counts as kept)."""
    total = hist.counts.sum()
    if total == 0 or threshold >= hist.range:
        return 0.0
    first_clipped = int(np.searchsorted(hist.edges, threshold, side="right"))
    return float(hist.counts[first_clipped:].sum() / total)


def make_observer(method: str, percentile: float = DEFAULT_PERCENTILE) -> Observer:
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile)
    if method == "entropy":
        return EntropyObserver()
    raise ValueError(f"unknown calibration method {method!r} (use entropy, minmax or percentile)")


def percentile_threshold(counts: np.ndarray, edges: np.ndarray, percentile: float, absmax: float) -> float:
    """The upper edge of the bin where the cumulative |x| count first reaches `percentile`."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    idx = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(edges[min(idx + 1, len(edges) - 1)], absmax))


def entropy_threshold(counts: np.ndarray, edges: np.ndarray, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> float:
    """TensorRT EntropyCalibration2 over a histogram of |x|; returns the chosen amax.

    For every candidate i from 128 bins to all bins: the reference P is the first i bins
    with everything beyond folded into bin i-1; the candidate Q squeezes those i bins
    into 128 quantization levels and spreads each level back uniformly over its
    non-empty bins. The threshold is the upper edge of the i with the least KL(P||Q)
    (the last one on ties). Bin 0 is set to bin 1's count first, as TensorRT's
    calibrator (and NVIDIA's pytorch-quantization port of it) does, so the spike of
    exact zeros after a ReLU does not dominate the divergence.

    Written here rather than taken from onnxruntime: ORT's `get_entropy_threshold`
    histograms signed values symmetrically and uses other bin counts, so it does not
    reproduce TensorRT's thresholds (compared in tests/test_calibration_entropy.py).
    """
    bins = np.asarray(counts, dtype=np.float64).copy()
    n = len(bins)
    if n < num_quantized_bins or bins.sum() == 0:
        return float(edges[-1])
    bins[0] = bins[1]
    kl = _kl_all_candidates(bins, num_quantized_bins)
    # The last minimum wins, like TensorRT's `<=` scan; values equal up to rounding are ties
    # (the closed form leaves ~1e-15 where the scan computes an exact 0).
    finite = kl[np.isfinite(kl)]
    if finite.size == 0:
        return float(edges[-1])
    lowest = float(finite.min())
    best = int(np.flatnonzero(kl <= lowest + 1e-12 + 1e-9 * abs(lowest))[-1])
    return float(edges[num_quantized_bins + best])


def _kl_all_candidates(bins: np.ndarray, levels: int) -> np.ndarray:
    """KL(P_i || Q_i) for every candidate i = levels..n at once, from prefix sums.

    Same quantity as `_kl_divergence(ref_i, cand_i)` per candidate (the loop TensorRT's
    description gives), computed in closed form so a 2048-bin histogram costs a few
    milliseconds instead of half a second: level l of candidate i holds bins
    [ceil(l*i/levels), ceil((l+1)*i/levels)), and each bin's term p*log(p/q) splits into
    sums of b*log(b) and b over a level, which prefix sums give directly.
    """
    n = len(bins)
    total = bins.sum()
    logb = np.log(bins, out=np.zeros_like(bins), where=bins > 0)
    csum = np.concatenate([[0.0], np.cumsum(bins)])  # csum[k] = sum(bins[:k])
    cnz = np.concatenate([[0.0], np.cumsum(bins > 0)])
    cblogb = np.concatenate([[0.0], np.cumsum(bins * logb)])
    cand = np.arange(levels, n + 1)
    lev = np.arange(levels)
    start = (lev[None, :] * cand[:, None] + levels - 1) // levels
    end = ((lev[None, :] + 1) * cand[:, None] + levels - 1) // levels
    level_sum = csum[end] - csum[start]
    level_nz = cnz[end] - cnz[start]
    level_blogb = cblogb[end] - cblogb[start]
    avg = np.divide(level_sum, level_nz, out=np.ones_like(level_sum), where=level_nz > 0)
    log_avg = np.log(avg, out=np.zeros_like(avg), where=avg > 0)
    kept = csum[cand]  # q's total: the mass of the first i bins
    log_kept = np.log(kept, out=np.zeros_like(kept), where=kept > 0)
    # sum over every non-empty bin j < i of b_j * (log b_j - log avg_level(j) + log kept - log total)
    body = (level_blogb - level_sum * log_avg).sum(axis=1) + kept * (log_kept - np.log(total))
    # the last bin also carries the clipped tail: replace its term
    last = bins[cand - 1]
    tail = total - kept
    last_level = ((cand - 1) * levels) // cand
    log_avg_last = log_avg[np.arange(len(cand)), last_level]
    ref_last = last + tail
    common = log_kept - np.log(total) - log_avg_last
    old_term = np.where(last > 0, last * (logb[cand - 1] + common), 0.0)
    log_ref_last = np.log(ref_last, out=np.zeros_like(ref_last), where=ref_last > 0)
    new_term = np.where(ref_last > 0, ref_last * (log_ref_last + common), 0.0)
    kl = (body - old_term + new_term) / total
    kl[(kept == 0) | ((last == 0) & (tail > 0))] = np.inf  # q empty, or p's tail lands on a bin q leaves empty
    return kl


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p||q) with q normalised; a p mass where q is empty makes it infinite (as scipy's entropy)."""
    q_total = q.sum()
    if q_total == 0:
        return np.inf
    q = q / q_total
    p = p / p.sum()
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def per_channel_weight_amax(weight: np.ndarray, axis: int = 0) -> np.ndarray:
    """Symmetric per-output-channel |w| max (scale = amax / 127), the form every INT8 backend takes."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0)
    return np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
