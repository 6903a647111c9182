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

from hadmc_deploy.calibration.observers import CHUNK
from hadmc_deploy.calibration.ranges import TensorRange

CANDIDATE_METHODS = ("entropy", "percentile", "minmax")  # in this order: ties go to the earlier one


def _grid(rng: TensorRange, symmetric: bool) -> tuple[float, float, float]:
    """(scale, lowest, highest) of the integer grid ORT quantizes to for `rng`, with the zero point
    folded into the bounds: x -> clip(round(x / scale), lowest, highest) * scale. Python floats keep
    the arithmetic in float32 (NEP 50); an np.float64 zero point made it float64 and 6x slower."""
    if symmetric:  # int8, zero point 0, scale = amax/127
        return max(rng.amax, 1e-12) / 127.0, -128.0, 127.0
    lo, hi = rng.clipped()
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # ORT keeps 0 exactly representable
    scale = max(hi - lo, 1e-12) / 255.0
    zero = float(np.round(-lo / scale))
    return scale, -zero, 255.0 - zero


def fake_quantize(x: np.ndarray, rng: TensorRange, symmetric: bool) -> np.ndarray:
    """x through QuantizeLinear/DequantizeLinear as ONNX Runtime computes the scales for `rng`."""
    scale, lowest, highest = _grid(rng, symmetric)
    return np.clip(np.round(x / scale), lowest, highest) * scale


def quantization_sq_error(x: np.ndarray, rng: TensorRange, symmetric: bool, work: np.ndarray | None = None) -> float:
    """sum((fake_quantize(x) - x)^2) in one float32 buffer (`work`, reused across calls when given):
    the held-out choice runs it three times per tensor and batch."""
    scale, lowest, highest = _grid(rng, symmetric)
    y = work if work is not None and work.shape == x.shape and work.dtype == x.dtype else np.empty_like(x)
    np.divide(x, scale, out=y)
    np.round(y, out=y)
    np.clip(y, lowest, highest, out=y)
    y *= scale
    y -= x
    flat = y.ravel()
    return float(np.dot(flat, flat))


class HeldOutError:
    """Accumulates, per tensor and candidate range, the squared quantization error on held-out batches."""

    def __init__(self, candidates: Mapping[str, Mapping[str, TensorRange]], symmetric: bool) -> None:
        self.candidates = candidates
        self.symmetric = symmetric
        self.errors = {name: dict.fromkeys(by_method, 0.0) for name, by_method in candidates.items()}

    def observe(self, name: str, x: np.ndarray) -> None:
        """A chunk at a time, every candidate on it while it is in cache (observers.CHUNK)."""
        flat = np.ascontiguousarray(x, dtype=np.float32).ravel()
        work = np.empty(min(flat.size, CHUNK), dtype=np.float32)
        errors = self.errors[name]
        for at in range(0, flat.size, CHUNK):
            part = flat[at : at + CHUNK]
            for method, rng in self.candidates[name].items():
                errors[method] += quantization_sq_error(part, rng, self.symmetric, work[: part.size])

    def best(self) -> dict[str, TensorRange]:
        """The lowest-error candidate per tensor, its method recorded in the range."""
        chosen = {}
        for name, errs in self.errors.items():
            order = list(errs)  # ties go to the earlier candidate
            key = min(order, key=lambda m: (errs[m], order.index(m)))
            rng = self.candidates[name][key]
            chosen[name] = TensorRange(rng.amax, rng.min, rng.max, method=rng.method or key)
        return chosen
