"""A roofline latency estimate from the target's datasheet, for targets without a measured LUT.

Each layer costs max(compute time, memory time) + a launch overhead, where
compute uses the channel counts padded up to the target's alignment (the
hardware computes the padding anyway, which is what makes latency a staircase in
channels) and memory counts activations and weights once. It ranks pruning
choices sensibly but its absolute numbers are rough: every prediction is
labelled "analytic" so nobody mistakes it for a measurement.
"""

from __future__ import annotations

from typing import Any

from hadmc_deploy.latency.base import Prediction
from hadmc_deploy.specs import LayerSpec, round_up
from hadmc_deploy.targets import TargetProfile

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}
#: fraction of the datasheet peak a real kernel reaches (roofline models assume 100%;
#: measured CNN layers on CPUs and GPUs reach roughly half).
DEFAULT_EFFICIENCY = 0.5


class AnalyticLatencyModel:
    """Roofline over `target.datasheet`: peak rate per precision, bandwidth, launch overhead, padding."""

    kind = "analytic"

    def __init__(self, target: TargetProfile, *, efficiency: float = DEFAULT_EFFICIENCY, scale: float = 1.0) -> None:
        self.target = target
        self.efficiency = efficiency
        #: multiplies every estimate; a LUT model sets it from its measured entries so
        #: analytic fill-ins for uncovered layers land on the table's scale.
        self.scale = scale

    def layer_ms(self, spec: LayerSpec) -> float:
        sheet = self.target.datasheet
        align = self.target.alignment(spec.precision)
        peak = sheet.peak_tflops.get(spec.precision) or sheet.peak_tflops.get("fp32") or 1.0
        cin = round_up(spec.in_channels, align)
        cout = round_up(spec.out_channels, align)
        padded = spec.with_channels(cin, cout) if spec.op not in ("dwconv",) else spec.with_channels(cin, cin)
        compute_s = 2.0 * padded.macs() / (peak * 1e12 * self.efficiency)
        bpe = BYTES_PER_ELEMENT.get(spec.precision, 4)
        ih, iw = spec.in_hw
        oh, ow = spec.out_hw
        n_in = spec.n_inputs if spec.op in ("add", "mul", "concat") else 1
        in_ch = spec.in_channels if spec.op != "concat" else spec.out_channels
        elements = spec.batch * spec.rows_per_sample() * (in_ch * ih * iw * (n_in if spec.op != "concat" else 1) + spec.out_channels * oh * ow)
        if spec.op in ("conv", "dwconv", "gconv", "convtranspose", "linear"):
            kh, kw = spec.kernel if spec.op != "linear" else (1, 1)
            elements += spec.out_channels * (spec.in_channels // max(spec.groups, 1)) * kh * kw
        memory_s = elements * bpe / (sheet.memory_gbps * 1e9)
        return self.scale * (max(compute_s, memory_s) * 1e3 + sheet.launch_overhead_us * 1e-3)

    def predict(self, specs: list[LayerSpec]) -> Prediction:
        per_layer = [self.layer_ms(s) for s in specs]
        return Prediction(
            total_ms=float(sum(per_layer)),
            per_layer_ms=per_layer,
            source="analytic",
            per_layer_source=["analytic"] * len(per_layer),
            notes=[f"roofline estimate from the {self.target.name} datasheet ({self.target.datasheet.source}); not measured"],
        )

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target.name, "datasheet": self.target.datasheet.source, "efficiency": self.efficiency, "scale": self.scale}
