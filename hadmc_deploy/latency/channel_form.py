"""A grouped conv's in-context cost as a function of its input and output channels, fitted on the
context fit's profiled plans, where the curve over its MACs fraction misprices it.

Why: ONNX Runtime runs a grouped conv whose channels per group are off the blocked width with its
unblocked kernel (per group: im2col, then a GEMM). Profiled in the plans of the grouped CNN of
`tools/validate_latency_model.py`, that kernel's in-context time followed input channels far more
than MACs (a scratch profile, 2026-12-02: 48 -> 48 channels 0.155 ms, 32 -> 80, more MACs, 0.130
ms). The context's curves are over the MACs fraction, so they priced such layers in held-out plans
8-57% off on average (`tools/analyse_channel_form.py`, docs/latency_model.md "Method v13"). This
form,

    ms = a + b * ci + c * co + d * ci * co      (ci, co: fractions of full width; a..d >= 0)

(a fixed cost, the input's im2col, the output's write, the GEMM), fitted by non-negative least
squares on the plans of one regime, predicted them 1.4-4x closer (FP32 and INT8, batch 1 and 32),
while on a model of plain convs it did worse than the curves. Uniform plans vary ci and co
together, so the form is fitted only where the plans also vary them apart (`context_plans`'
crossed plans), and kept only where it predicts each profiled plan left out of the fit clearly
better than the curve does.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Sequence

import numpy as np

#: a regime's profiled points needed before the form (4 coefficients) is tried.
MIN_POINTS = 5
#: the form is kept only when its leave-one-out error is below this fraction of the curve's.
WIN_MARGIN = 0.8
#: ...and only when it is also at least this much better (mean relative error, absolute): a gain
#: below the timings' resolution is a tie, and a tie keeps the curve. Where both fit exactly (a cost
#: proportional to MACs), the two errors are float rounding (1e-16), which the margin alone compared.
MIN_GAIN = 0.005
#: (ci, co) pairs whose ratios differ by less than this count as one shape (uniform plans).
_DISTINCT_RATIO = 0.1

#: (input fraction, output fraction, in-context ms) of one profiled plan.
Point = tuple[float, float, float]


def _terms(ci: float, co: float) -> list[float]:
    return [1.0, ci, co, ci * co]


def form_ms(coefficients: Sequence[float], ci: float, co: float) -> float:
    """The form's in-context ms at input / output fractions `ci`, `co` of full width."""
    return float(np.dot(coefficients, _terms(ci, co)))


def fit_form(points: Sequence[Point]) -> list[float]:
    """Non-negative least squares of the form on `points`.

    Exact by enumeration: with four terms, the best non-negative solution is the unconstrained
    least-squares solution on one of the 15 non-empty subsets of terms (the rest held at zero)
    whose coefficients all come out non-negative (numpy has no NNLS; scipy is not a dependency)."""
    a = np.array([_terms(ci, co) for ci, co, _ in points])
    y = np.array([ms for _, _, ms in points])
    best, best_err = [0.0] * 4, float(np.sum(y**2))
    for k in range(1, 5):
        for subset in itertools.combinations(range(4), k):
            x, *_ = np.linalg.lstsq(a[:, subset], y, rcond=None)
            if np.any(x < 0):
                continue
            err = float(np.sum((a[:, subset] @ x - y) ** 2))
            if err < best_err:
                best_err, best = err, [0.0] * 4
                for j, v in zip(subset, x, strict=True):
                    best[j] = float(v)
    return best


def shapes_vary(points: Sequence[Point]) -> bool:
    """Whether the points vary input and output channels apart (not only together)."""
    ratios = sorted(ci / co for ci, co, _ in points if co > 0)
    return len(ratios) >= 2 and ratios[-1] > ratios[0] * (1.0 + _DISTINCT_RATIO)


def leave_one_out_error(points: Sequence[Point], predict: Callable[[Sequence[Point], float, float], float]) -> float:
    """Mean relative error of `predict(other points, ci, co)` at each point left out in turn."""
    errors = []
    for k, (ci, co, ms) in enumerate(points):
        rest = [p for j, p in enumerate(points) if j != k]
        errors.append(abs(predict(rest, ci, co) / ms - 1.0) if ms > 0 else 0.0)
    return statistics.fmean(errors)


def choose_form(points: Sequence[Point], curve_ms: Callable[[Sequence[Point], float, float], float], margin: float = WIN_MARGIN) -> list[float] | None:
    """The form's coefficients when it predicts each point left out clearly better (`margin`, and
    by `MIN_GAIN` at least) than `curve_ms` (the curve built from the other points) does, else None."""
    if len(points) < MIN_POINTS or not shapes_vary(points):
        return None
    form_error = leave_one_out_error(points, lambda rest, ci, co: form_ms(fit_form(rest), ci, co))
    curve_error = leave_one_out_error(points, curve_ms)
    return fit_form(points) if form_error < margin * curve_error and curve_error - form_error >= MIN_GAIN else None
