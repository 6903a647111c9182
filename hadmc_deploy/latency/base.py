"""What every latency model returns, and the protocol the search codes against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hadmc_deploy.specs import LayerSpec

#: where a prediction came from: measured table, roofline estimate, or a mix of both.
SOURCES = ("lut", "analytic", "lut+analytic")


@dataclass
class Prediction:
    """Predicted end-to-end latency of a list of layers (ms), per layer, and who made it.

    `total_ms` = sum(per_layer_ms) + overhead_ms (the fitted fixed cost of a run).
    `per_layer_source` names, per layer, "lut" (measured point), "lut-interp",
    "lut-extrap" (outside the measured range: extrapolated, with a warning) or
    "analytic" (no table covers it).
    """

    total_ms: float
    per_layer_ms: list[float]
    source: str
    overhead_ms: float = 0.0
    per_layer_source: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_ms": self.total_ms,
            "per_layer_ms": self.per_layer_ms,
            "source": self.source,
            "overhead_ms": self.overhead_ms,
            "per_layer_source": self.per_layer_source,
            "notes": self.notes,
        }


@runtime_checkable
class LatencyModel(Protocol):
    """Anything that prices a list of layer specs in milliseconds."""

    #: "lut" or "analytic": what kind of model this is (a Prediction may still mix).
    kind: str

    def predict(self, specs: list[LayerSpec]) -> Prediction: ...

    def describe(self) -> dict[str, Any]: ...
