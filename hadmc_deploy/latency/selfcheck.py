"""The build's self-check: predicted vs measured latency of what it built, and the feedback.

Every build measures its baseline and its chosen plan anyway (the report's
latency table). Comparing them with what the latency model predicted says
whether the search was steered by good numbers; beyond the tolerance the
measurements are fed back (`LutLatencyModel.corrected_with`), so a closed-loop
build re-searches on the measured scale instead of trusting the table again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hadmc_deploy.latency.base import LatencyModel
from hadmc_deploy.latency.predictor import LutLatencyModel
from hadmc_deploy.specs import LayerSpec

#: relative error beyond which a prediction is flagged (10%).
DEFAULT_TOLERANCE = 0.10


@dataclass
class CheckedPlan:
    name: str
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms, "error": self.error}


@dataclass
class SelfCheck:
    """Per plan predicted / measured / error, the tolerance, and the speedup both ways."""

    plans: list[CheckedPlan]
    tolerance: float = DEFAULT_TOLERANCE
    corrected: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return any(abs(p.error) > self.tolerance for p in self.plans)

    def speedups(self, baseline: str, plan: str) -> tuple[float, float] | None:
        """(predicted, measured) speedup of `plan` over `baseline`, when both were checked."""
        by = {p.name: p for p in self.plans}
        if baseline not in by or plan not in by:
            return None
        return by[baseline].predicted_ms / by[plan].predicted_ms, by[baseline].measured_ms / by[plan].measured_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "plans": [p.to_dict() for p in self.plans],
            "tolerance": self.tolerance,
            "flagged": self.flagged,
            "max_abs_error": max((abs(p.error) for p in self.plans), default=0.0),
            "corrected": self.corrected,
            "notes": self.notes,
        }


def self_check(
    model: LatencyModel,
    measured: dict[str, tuple[list[LayerSpec], float]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    scale_only_feedback: bool = False,
    history: Sequence[dict[str, Any]] = (),
) -> tuple[SelfCheck, LatencyModel]:
    """Check `model` against measured plans {name: (layer specs of the plan, measured ms)}.

    Returns the record for the report and the model to re-search with: the same model
    when every error is within `tolerance`, else one corrected with the measurements
    (LUT models only; an analytic model is returned unchanged, with a note), fitted together
    with `history`, earlier measurements of the same table (`LutLatencyModel.corrected_with`).
    The specs must carry the precision and batch the plans were measured at.
    """
    plans = [CheckedPlan(name, float(model.predict(specs).total_ms), float(ms)) for name, (specs, ms) in measured.items()]
    check = SelfCheck(plans, tolerance)
    if not check.flagged:
        return check, model
    if isinstance(model, LutLatencyModel):
        corrected = model.corrected_with([(specs, ms) for specs, ms in measured.values()], scale_only=scale_only_feedback, history=history)
        check.corrected = True
        fb = corrected.table.feedback
        if fb is not None:
            check.notes.append(f"prediction off by more than {tolerance:.0%}: feedback x{fb.scale:.3f} {fb.offset_ms:+.3f} ms ({fb.fitted_on[0]['how'] if fb.fitted_on else ''})")
        return check, corrected
    check.notes.append("prediction off, but the analytic model takes no feedback: measure a table (hadmc-deploy lut)")
    return check, model
