"""What a number of compared images can vouch for: one-sided Clopper-Pearson upper bounds on a
rate (top-1 disagreement, or top-1 accuracy lost) from the count seen among `samples` images.

Why one module: without labelled data two checks stand in for the 1-point accuracy guard, the
pruned model against the original (`build/fidelity.py`) and the INT8 graph against its float
source (`calibration/verify_qdq.py`); both pass only when their images vouch for a rate below the
guard, not merely when the rate they saw is below it. No SciPy in the core install: bisection on
the binomial CDF, written as the regularized incomplete beta function.
"""

from __future__ import annotations

import math


def count_bound(count: float, samples: int, confidence: float = 0.95) -> float:
    """One-sided upper bound on a rate after `count` events among `samples` images: the p at which
    seeing at most `count` has probability 1 - `confidence` (1.0 when nothing was seen). A
    fractional count (a summed expected loss) uses the binomial CDF's continuous extension,
    P(X <= k) = 1 - I_p(k + 1, n - k), so 0.07 images lost among 400 is not priced as one."""
    if samples <= 0 or count >= samples:
        return 1.0
    count = max(0.0, float(count))
    low, high = count / samples, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if 1.0 - _betainc(count + 1.0, samples - count, mid) > 1.0 - confidence else (low, mid)
    return high


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes' continued fraction,
    Lentz's method): SciPy's `betainc`, which the core install does not carry."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return h


def disagreement_bound(agreement: float, samples: int, confidence: float = 0.95) -> float:
    """One-sided upper bound on the disagreement rate after `samples` images agreed at `agreement`.
    Why: 206 images at 100% agreement vouch only for under 1.4%, above the 1-point guard; in the
    unlabelled closed-loop matrix (docs/closed_loop_unlabelled.md) such a build lost 1.4 points on
    the test set."""
    return count_bound(round((1.0 - agreement) * samples), samples, confidence)


def max_disagreements(samples: int, rate: float, confidence: float = 0.95) -> int:
    """The most top-1 disagreements among `samples` images that still vouch (`disagreement_bound`)
    for a disagreement rate below `rate`; -1 when not even none do (fewer than
    `images_to_vouch(rate)` images)."""
    k = -1
    while k + 1 < samples and count_bound(k + 1, samples, confidence) <= rate + 1e-12:
        k += 1
    return k


def images_to_vouch(rate: float, confidence: float = 0.95, lost: float = 0.0) -> int:
    """The fewest images that vouch for a rate below `rate` when `lost` of them count against it:
    (1 - rate)^n <= 1 - confidence with none, 299 for 1% at 95%; 473 with one."""
    n = math.ceil(math.log(1.0 - confidence) / math.log1p(-rate))
    while lost > 0 and count_bound(lost, n, confidence) > rate + 1e-12:
        n += 1
    return n
