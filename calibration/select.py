"""Per-tensor choice of the range method: the candidate whose quantized tensor is closest to float.

Why per tensor: no single method is right for every activation. KL entropy suits
bell-shaped conv outputs, minmax suits bounded gates and inputs that must not be
clipped, a percentile suits long tails. Each tensor's three candidate ranges come
from one histogram (`HistogramObserver.amax_by_method`); the choice is measured on
calibration samples HELD OUT from the histograms, as the squared error between the
tensor and its quantize-dequantize in the form the graph will use (symmetric int8 or
asymmetric uint8), so a range that only fits the samples it was computed on loses.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hadmc_deploy.calibration.ranges import TensorRange

CANDIDATE_METHODS = ("entropy", "percentile", "minmax")  # in this order: ties go to the earlier one


def fake_quantize(x: np.ndarray, rng: TensorRange, symmetric: bool) -> np.ndarray:
    """x through QuantizeLinear/DequantizeLinear as ONNX Runtime computes the scales for `rng`."""
    if symmetric:  # int8, zero point 0, scale = amax/127
        scale = max(rng.amax, 1e-12) / 127.0
        return np.clip(np.round(x / scale), -128, 127) * scale
    lo, hi = rng.clipped()
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # ORT keeps 0 exactly representable
    scale = max(hi - lo, 1e-12) / 255.0
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


class HeldOutError:
    """Accumulates, per tensor and candidate range, the squared quantization error on held-out batches."""

    def __init__(self, candidates: Mapping[str, Mapping[str, TensorRange]], symmetric: bool) -> None:
        self.candidates = candidates
        self.symmetric = symmetric
        self.errors = {name: dict.fromkeys(by_method, 0.0) for name, by_method in candidates.items()}

    def observe(self, name: str, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False)
        for method, rng in self.candidates[name].items():
            diff = fake_quantize(x, rng, self.symmetric) - x
            self.errors[name][method] += float(np.dot(diff.ravel(), diff.ravel()))

    def best(self) -> dict[str, TensorRange]:
        """The lowest-error candidate per tensor, its method recorded in the range."""
        chosen = {}
        for name, errs in self.errors.items():
            order = list(errs)  # ties go to the earlier candidate
            key = min(order, key=lambda m: (errs[m], order.index(m)))
            rng = self.candidates[name][key]
            chosen[name] = TensorRange(rng.amax, rng.min, rng.max, method=rng.method or key)
        return chosen
