"""The measured latency model: table lookup, step-aware interpolation, whole-model correction.

Latency in channels is a staircase: a backend pads channel counts up to its
alignment (SIMD width, tensor-core tile), so 65 channels cost what 72 do. A
smooth fit across those steps would tell the search that removing one channel
buys time when it buys none. So an unaligned count is first rounded UP to the
alignment (the step), and only aligned grid points are interpolated between,
bilinearly in (in, out) inside one grid cell.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from typing import Any

from hadmc_deploy.latency.analytic import AnalyticLatencyModel
from hadmc_deploy.latency.base import Prediction
from hadmc_deploy.latency.lut import LatencyTable
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import UI, quiet_ui

#: extrapolating below the smallest measured width never predicts less than this
#: fraction of that point's latency (fixed per-layer costs do not shrink to zero).
_EXTRAPOLATION_FLOOR = 0.25


def _ceil_to(c: int, align: int) -> int:
    return int(math.ceil(c / align) * align) if align > 1 else c


def axis_weights(values: list[int], c: int, align: int) -> tuple[list[tuple[int, float]], bool]:
    """Grid values and weights that price channel count `c` on one axis, and whether it extrapolates.

    `values` are the measured counts, sorted. Step-aware: `c` costs what the next
    aligned count costs (or the nearest measured count between them), and only
    that aligned target is interpolated linearly between its two neighbours.
    """
    pos = bisect.bisect_left(values, c)
    if pos < len(values) and values[pos] == c:
        return [(c, 1.0)], False
    target = _ceil_to(c, align)
    if pos < len(values) and values[pos] <= target:
        # A measured count between c and its aligned ceiling: c pads at most up to it.
        return [(values[pos], 1.0)], False
    hi = bisect.bisect_left(values, target)
    if hi < len(values) and values[hi] == target:
        return [(target, 1.0)], False
    if 0 < hi < len(values):
        lo_v, hi_v = values[hi - 1], values[hi]
        t = (target - lo_v) / (hi_v - lo_v)
        return [(lo_v, 1.0 - t), (hi_v, t)], False
    if len(values) == 1:
        return [(values[0], target / values[0])], True
    a, b = (values[0], values[1]) if hi == 0 else (values[-2], values[-1])
    t = (target - a) / (b - a)
    return [(a, 1.0 - t), (b, t)], True


class _Family:
    """All measured points of one layer shape (everything but the channel counts)."""

    def __init__(self) -> None:
        self.points: dict[tuple[int, int], float] = {}

    def finish(self) -> None:
        self.ins = sorted({i for i, _ in self.points})
        self.outs = sorted({o for _, o in self.points})
        self.diagonal = all(i == o for i, o in self.points)
        self.diag_values = sorted({i for i, o in self.points if i == o})

    def price(self, ci: int, co: int, align: int) -> tuple[float, str]:
        if self.diagonal and ci == co:
            weights, extrap = axis_weights(self.diag_values, ci, align)
            ms = sum(w * self.points[(v, v)] for v, w in weights)
            return self._floor(ms, [(v, v) for v, _ in weights]), "lut-extrap" if extrap else "lut-interp"
        w_in, ex_in = axis_weights(self.ins, ci, align)
        w_out, ex_out = axis_weights(self.outs, co, align)
        corners = [((i, o), wi * wo) for i, wi in w_in for o, wo in w_out]
        if all(p in self.points for p, _ in corners):
            ms = sum(w * self.points[p] for p, w in corners)
            return self._floor(ms, [p for p, _ in corners]), "lut-extrap" if (ex_in or ex_out) else "lut-interp"
        return self._nearest_scaled(ci, co, align), "lut-extrap"

    def _floor(self, ms: float, used: list[tuple[int, int]]) -> float:
        return max(ms, _EXTRAPOLATION_FLOOR * min(self.points[p] for p in used))

    def _nearest_scaled(self, ci: int, co: int, align: int) -> float:
        """Irregular grid (a budget cut it short): the nearest point, scaled by padded work."""
        ci_a, co_a = _ceil_to(ci, align), _ceil_to(co, align)
        (pi, po), ms = min(self.points.items(), key=lambda kv: abs(math.log(kv[0][0] / ci_a)) + abs(math.log(kv[0][1] / co_a)))
        return max(ms * (ci_a * co_a) / (pi * po), _EXTRAPOLATION_FLOOR * ms)


class LutLatencyModel:
    """Predicts from a measured `LatencyTable`; layers it does not cover go to `fallback` (analytic)."""

    kind = "lut"

    def __init__(self, table: LatencyTable, fallback: AnalyticLatencyModel | None = None, *, source: str = "<memory>", ui: UI | None = None) -> None:
        self.table = table
        self.source = source
        self.ui = ui or quiet_ui()
        self.alignment = max(int(table.meta.alignment), 1)
        self.families: dict[str, _Family] = defaultdict(_Family)
        for entry in table.entries.values():
            s = entry.spec
            self.families[s.shape_key()].points[(s.in_channels, s.out_channels)] = table.value(entry)
        for fam in self.families.values():
            fam.finish()
        self.fallback = fallback
        if fallback is not None and table.entries:
            # Put analytic fill-ins on the table's scale: the roofline's absolute numbers are rough.
            ratios = [table.value(e) / fallback.layer_ms(e.spec) for e in table.entries.values()]
            fallback.scale *= statistics.median(ratios)
        self._cache: dict[str, tuple[float, str]] = {}
        self._warned: set[str] = set()

    def layer_ms(self, spec: LayerSpec) -> tuple[float, str]:
        """(raw latency in ms before the whole-model correction, how it was obtained)."""
        key = spec.key()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        entry = self.table.entries.get(key)
        if entry is not None:
            result = (self.table.value(entry), "lut")
        else:
            fam = self.families.get(spec.shape_key())
            if fam is None or not fam.points:
                result = self._analytic(spec)
            else:
                result = fam.price(spec.in_channels, spec.out_channels, self.alignment)
                if result[1] == "lut-extrap" and spec.shape_key() not in self._warned:
                    self._warned.add(spec.shape_key())
                    self.ui.warn(
                        f"{spec.op} at {spec.in_channels}->{spec.out_channels} channels is outside the measured range of "
                        f"{self.source} (or between points a budget-limited run did not reach): extrapolated from the nearest "
                        "table points; rerun `hadmc-deploy lut` for this model to measure them"
                    )
        self._cache[key] = result
        return result

    def _analytic(self, spec: LayerSpec) -> tuple[float, str]:
        if self.fallback is None:
            from hadmc_deploy.errors import LatencyModelError

            raise LatencyModelError(f"latency table {self.source} has no entry like {spec.key()}", hint="re-measure the table for this model with `hadmc-deploy lut`")
        if "analytic" not in self._warned:
            self._warned.add("analytic")
            self.ui.warn(f"latency table {self.source} does not cover every layer (e.g. {spec.op} {spec.key()}): those layers use the analytic model, labelled 'lut+analytic'")
        return self.fallback.layer_ms(spec), "analytic"

    def predict(self, specs: list[LayerSpec]) -> Prediction:
        raw = [self.layer_ms(s) for s in specs]
        corr = self.table.correction
        scale, offset = (corr.scale, corr.offset_ms) if corr is not None else (1.0, 0.0)
        per_layer = [scale * ms for ms, _ in raw]
        kinds = [k for _, k in raw]
        n_analytic = kinds.count("analytic")
        if n_analytic == 0:
            source = "lut"
        elif n_analytic == len(kinds):
            source = "analytic"
        else:
            source = "lut+analytic"
        notes = []
        if n_analytic:
            notes.append(f"{n_analytic} of {len(kinds)} layers priced by the analytic model (not in the table)")
        if "lut-extrap" in kinds:
            notes.append(f"{kinds.count('lut-extrap')} layers extrapolated outside the measured channel range")
        return Prediction(
            total_ms=float(sum(per_layer) + offset),
            per_layer_ms=per_layer,
            source=source,
            overhead_ms=offset,
            per_layer_source=kinds,
            notes=notes,
        )

    def describe(self) -> dict[str, Any]:
        meta = self.table.meta
        return {
            "kind": self.kind,
            "lut": self.source,
            "target": meta.target,
            "backend": f"{meta.backend} {meta.backend_version}",
            "precision": meta.precision,
            "statistic": self.table.statistic,
            "entries": len(self.table),
            "correction": None if self.table.correction is None else self.table.correction.to_dict(),
        }


def fit_correction(layer_sums_ms: list[float], measured_ms: list[float]) -> tuple[float, float]:
    """Least-squares (scale, offset) with measured ~= scale * layer_sum + offset.

    With one plan only the scale is fitted (offset 0). A fit that would make the
    scale non-positive (noise on near-identical plans) falls back to a pure ratio.
    """
    n = len(layer_sums_ms)
    if n == 0 or n != len(measured_ms):
        raise ValueError("need as many layer sums as measurements, at least one")
    if n == 1 or max(layer_sums_ms) - min(layer_sums_ms) < 1e-9:
        return statistics.fmean(measured_ms) / statistics.fmean(layer_sums_ms), 0.0
    mx, my = statistics.fmean(layer_sums_ms), statistics.fmean(measured_ms)
    sxx = sum((x - mx) ** 2 for x in layer_sums_ms)
    sxy = sum((x - mx) * (y - my) for x, y in zip(layer_sums_ms, measured_ms, strict=True))
    scale = sxy / sxx
    if scale <= 0:
        return my / mx, 0.0
    return scale, my - scale * mx
