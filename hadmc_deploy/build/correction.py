"""The closed loop's correction of the latency model: measured = scale * predicted + offset.

Why affine, fitted on whole-model measurements of this build: a speedup budget compares a
plan with the baseline, so a pure scale cancels out; what makes a plan miss when measured
is the part of the run time that narrowing does not remove (per-operator overhead, layout
reorders, Q/DQ between layers). Two measured points (baseline and the chosen plan) pin
that offset down; more rounds add points and the fit becomes least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hadmc_deploy.latency.base import Prediction


@dataclass(frozen=True)
class MeasuredPoint:
    name: str
    predicted_ms: float
    measured_ms: float


@dataclass(frozen=True)
class LatencyCorrection:
    scale: float = 1.0
    offset_ms: float = 0.0
    points: tuple[MeasuredPoint, ...] = field(default_factory=tuple)

    def apply(self, pred: Prediction) -> Prediction:
        total = self.scale * pred.total_ms + self.offset_ms
        return Prediction(
            total_ms=total,
            per_layer_ms=[self.scale * v for v in pred.per_layer_ms],
            source=pred.source,
            overhead_ms=self.scale * pred.overhead_ms + self.offset_ms,
            per_layer_source=list(pred.per_layer_source),
            notes=[*pred.notes, f"corrected by this build's measurements: {self.scale:.3f} x predicted + {self.offset_ms:.3f} ms"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset_ms": self.offset_ms, "points": [p.__dict__ for p in self.points]}

    @classmethod
    def fit(cls, points: list[MeasuredPoint]) -> LatencyCorrection:
        """Least-squares affine fit, kept physical: a positive scale and an offset that never
        makes the fastest measured point negative. With one point, or points whose predictions
        barely differ (an ill-conditioned fit), only the scale is fitted."""
        pts = tuple(points)
        if not pts:
            return cls()
        xs = [p.predicted_ms for p in pts]
        ys = [p.measured_ms for p in pts]
        if len(pts) == 1 or max(xs) - min(xs) < 0.05 * max(xs):
            return cls(scale=sum(ys) / max(sum(xs), 1e-12), offset_ms=0.0, points=pts)
        n = len(pts)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        scale = sxy / sxx
        if scale <= 0.05:  # measurements that do not fall with the prediction: trust only the level
            return cls(scale=my / max(mx, 1e-12), offset_ms=0.0, points=pts)
        offset = my - scale * mx
        offset = max(offset, -0.9 * scale * min(xs))
        return cls(scale=scale, offset_ms=offset, points=pts)


@dataclass
class PlanLoop:
    """The closed loop's state within one build: the correction so far, the points it was
    fitted on, each round's plan and measurement, and a plan forced back (the best measured)."""

    correction: LatencyCorrection | None = None
    forced_plan: dict[str, int] | None = None
    points: list[MeasuredPoint] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
