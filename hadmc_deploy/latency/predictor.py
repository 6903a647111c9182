"""The measured latency model: table lookup, step-aware interpolation, whole-model correction.

Latency in channels is a staircase. Tables without a measured staircase (older
ones, TensorRT tables) assume padding: an unaligned count is rounded UP to the
target's alignment and only aligned grid points are interpolated, bilinearly in
(in, out) inside one grid cell. That assumption was wrong on ONNX Runtime CPU:
unaligned counts leave the blocked NCHWc kernels and cost MORE than the next
aligned count (plans pruned to odd widths ran 21-26% slower than predicted). So
tables with a measured `Staircase` price an unaligned count on the line between
its aligned neighbours times the measured penalty of unaligned counts (per
layer family where points just off the grid were measured, else per op kind).
A `ContextCorrection` (profiled whole deployed graphs) then scales each layer.

Longer than most modules because the corrections that shape a prediction (the
regularised fits, the context factor, the feedback) are applied here and kept
next to the code that applies them.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from hadmc_deploy.latency.analytic import AnalyticLatencyModel
from hadmc_deploy.latency.base import Prediction
from hadmc_deploy.latency.blocking import regime_and_size
from hadmc_deploy.latency.channel_form import form_ms
from hadmc_deploy.latency.lut import Correction, LatencyTable
from hadmc_deploy.specs import LayerSpec, round_up
from hadmc_deploy.ui import UI, quiet_ui

#: ops whose kernels are blocked on channels (the staircase penalty applies to them).
_BLOCKED_OPS = ("conv", "gconv", "dwconv", "linear", "convtranspose")
#: extrapolating below the smallest measured width never predicts less than this
#: fraction of that point's latency (fixed per-layer costs do not shrink to zero).
_EXTRAPOLATION_FLOOR = 0.25


def _in_block(count: int, step: int, measured: list[int]) -> int:
    """The count a padded price reads (pad mode: a blocked kernel pays for whole blocks of `step`):
    `count` or its padded count where measured, else the largest count measured in the same block
    (a measurement of the same price), else the padded count, interpolated from the grid."""
    padded = round_up(count, step)
    if count in measured or padded in measured:
        return count if count in measured else padded
    same = [v for v in measured if round_up(v, step) == padded]
    return max(same) if same else padded


def axis_weights(values: list[int], c: int, align: int) -> tuple[list[tuple[int, float]], bool]:
    """Grid values and weights that price channel count `c` on one axis, and whether it extrapolates.

    `values` are the measured counts, sorted. Step-aware: `c` costs what the next
    aligned count costs (or the nearest measured count between them), and only
    that aligned target is interpolated linearly between its two neighbours.
    """
    pos = bisect.bisect_left(values, c)
    if pos < len(values) and values[pos] == c:
        return [(c, 1.0)], False
    target = round_up(c, align)
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
        #: points off the alignment grid (exact hits only, never interpolated between).
        self.extra: dict[tuple[int, int], float] = {}
        self.pen_in: float | None = None
        self.pen_out: float | None = None

    def reference(self, ci: int, co: int, step: int, mode: str) -> tuple[float, str]:
        """An unaligned point's price before its penalty: at its padded counts ("pad") or on the line."""
        if mode == "pad":
            if self.diagonal and ci == co:
                pi = po = _in_block(ci, step, self.diag_values)
            else:
                pi, po = _in_block(ci, step, self.ins), _in_block(co, step, self.outs)
            return self.price_aligned(pi, po, step, padded=True)
        return self.price_aligned(ci, co, step)

    def measured_penalties(self, step: int, mode: str) -> None:
        """Penalty of this family's own points just off the grid: t / (its reference price)."""
        pin, pout = [], []
        for (ci, co), ms in self.extra.items():
            if (ci, co) in self.points:
                continue
            base, _ = self.reference(ci, co, step, mode)
            if base <= 0:
                continue
            if ci % step and not co % step:
                pin.append(ms / base)
            elif co % step and not ci % step:
                pout.append(ms / base)
        self.pen_in = statistics.median(pin) if pin else None
        self.pen_out = statistics.median(pout) if pout else None

    def price_aligned(self, ci: int, co: int, step: int, padded: bool = False) -> tuple[float, str]:
        """The line through aligned grid points at (ci, co), no padding, no penalty. `padded`: priced
        as its block of `step` (pad mode), so a row of a merged family may read it at another count
        measured in the same block (`_by_rows`)."""
        if self.diagonal and ci == co:
            vals = [v for v in self.diag_values if v % step == 0] or self.diag_values
            weights, extrap = axis_weights(vals, ci, 1)
            return self._floor(sum(w * self.points[(v, v)] for v, w in weights), [(v, v) for v, _ in weights]), "lut-extrap" if extrap else "lut-interp"
        ins = [v for v in self.ins if v % step == 0 or v == ci]
        outs = [v for v in self.outs if v % step == 0 or v == co]
        ins = ins if len(ins) >= min(2, len(self.ins)) else self.ins
        outs = outs if len(outs) >= min(2, len(self.outs)) else self.outs
        w_in, ex_in = axis_weights(ins, ci, 1)
        w_out, ex_out = axis_weights(outs, co, 1)
        corners = [((i, o), wi * wo) for i, wi in w_in for o, wo in w_out]
        if all(p in self.points for p, _ in corners):
            ms = sum(w * self.points[p] for p, w in corners)
            return self._floor(ms, [p for p, _ in corners]), "lut-extrap" if (ex_in or ex_out) else "lut-interp"
        return self._by_rows(ci, co, w_in, ex_in, 1, lambda o: o % step == 0 or o == co, block=step if padded else 0)

    def price_staircase(self, ci: int, co: int, step: int, op_penalty: float, mode: str, weighted: bool) -> tuple[float, str]:
        """Reference price (padded or line, see Staircase.mode) times the measured penalty of each
        unaligned axis (weighted ops only)."""
        if (ci, co) in self.extra:
            return self.extra[(ci, co)], "lut"
        if not weighted or step <= 1:
            return self.price_aligned(ci, co, max(step, 1))
        ms, how = self.reference(ci, co, step, mode)
        if co % step and co not in self.outs and not (self.diagonal and ci == co):
            ms *= self.pen_out if self.pen_out is not None else op_penalty
        if ci % step and ci not in self.ins:
            ms *= self.pen_in if self.pen_in is not None else op_penalty
        return ms, how

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
        return self._by_rows(ci, co, w_in, ex_in, align, lambda o: True)

    def _floor(self, ms: float, used: list[tuple[int, int]]) -> float:
        return max(ms, _EXTRAPOLATION_FLOOR * min(self.points[p] for p in used))

    def _by_rows(self, ci: int, co: int, w_in: list[tuple[int, float]], ex_in: bool, align: int, usable: Any, block: int = 0) -> tuple[float, str]:
        """(ci, co) where the grid is not a product of its axes: layers of one shape merged into one
        family, each measured over its own widths (an SE block's squeeze convs: 8-22% of the layer
        prices of random MobileNetV2/V3 and EfficientNet-B0 plans). Along each neighbouring input
        row, interpolated over the outputs measured in that row (those `usable`, when two are),
        then across the rows; extrapolated only outside a row's or the rows' range. Before this,
        any missing corner fell to the nearest point scaled by work, labelled extrapolated, and the
        user was told to re-measure a table that covered the layer. With `block` (pad mode: a count
        costs its block of `block` channels) a row that lacks `co` reads the count it measured in the
        same block: an SE squeeze conv at 32->17, padded to 32, read row 32's 24 (measured, the same
        two blocks) instead of extrapolating past it and warning."""
        total, used, extrap = 0.0, [], ex_in
        for i, wi in w_in:
            row = sorted(o for pi, o in self.points if pi == i)
            if block and co not in row and (same := [o for o in row if round_up(o, block) == round_up(co, block)]):
                total += wi * self.points[(i, max(same))]
                used.append((i, max(same)))
                continue
            row = [o for o in row if usable(o)] if sum(usable(o) for o in row) >= min(2, len(row)) else row
            if not row:
                return self._nearest_scaled(ci, co, align), "lut-extrap"
            w_out, ex_out = axis_weights(row, co, align)
            total += wi * sum(wo * self.points[(i, o)] for o, wo in w_out)
            used += [(i, o) for o, _ in w_out]
            extrap = extrap or ex_out
        return self._floor(total, used), "lut-extrap" if extrap else "lut-interp"

    def _nearest_scaled(self, ci: int, co: int, align: int) -> float:
        """Irregular grid (a budget cut it short): the nearest point, scaled by padded work."""
        ci_a, co_a = round_up(ci, align), round_up(co, align)
        (pi, po), ms = min(self.points.items(), key=lambda kv: abs(math.log(kv[0][0] / ci_a)) + abs(math.log(kv[0][1] / co_a)))
        return max(ms * (ci_a * co_a) / (pi * po), _EXTRAPOLATION_FLOOR * ms)


class LutLatencyModel:
    """Predicts from a measured `LatencyTable`; layers it does not cover go to `fallback` (analytic)."""

    kind = "lut"

    def __init__(
        self, table: LatencyTable, fallback: AnalyticLatencyModel | None = None, *, source: str = "<memory>", ui: UI | None = None, warn_extrapolation: bool = True
    ) -> None:
        """`warn_extrapolation` False: a caller that prices deliberately off-table plans (the context
        fit's odd widths) says so itself; the user is warned once, about the plans they asked for."""
        self.table = table
        self.warn_extrapolation = warn_extrapolation
        self.source = source
        self.ui = ui or quiet_ui()
        self.alignment = table.alignment()
        self.staircase = table.staircase
        self.families: dict[str, _Family] = defaultdict(_Family)
        for entry in table.entries.values():
            s = entry.spec
            fam = self.families[s.shape_key()]
            (fam.points if entry.role == "grid" else fam.extra)[(s.in_channels, s.out_channels)] = table.value(entry)
        self.families = defaultdict(_Family, {k: f for k, f in self.families.items() if f.points})
        for fam in self.families.values():
            fam.finish()
            if self.staircase is not None:
                fam.measured_penalties(self.staircase.step, self.staircase.mode)
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
            elif self.staircase is not None:
                step, penalty, mode = self.staircase.for_op(spec.op)
                result = fam.price_staircase(spec.in_channels, spec.out_channels, step, penalty, mode, spec.op in _BLOCKED_OPS)
            else:
                result = fam.price(spec.in_channels, spec.out_channels, self.alignment)
            if result[1] == "lut-extrap" and self.warn_extrapolation and "extrapolated" not in self._warned:
                # once per model: a plan outside the table has many such layers, and one line says what to do
                self._warned.add("extrapolated")
                where = f"{spec.op} at {spec.in_channels}->{spec.out_channels} channels (and any other layer priced outside the table)"
                if self.table.meta.method.get("complete"):
                    # a complete table's grid spans the counts it could measure for this model (from its
                    # step up to each layer's own widths): a count below the step or past a merged row's
                    # widths is not there, and re-measuring would not put it there
                    self.ui.warn(f"{where} lies beyond the channel counts {self.source} measured for this model: extrapolated along the "
                                 "line through its nearest points, labelled 'lut-extrap' (the table is complete; measuring again adds no such counts)")
                else:
                    self.ui.warn(
                        f"{where} is outside the measured range of {self.source} (or between points a budget-limited run did not reach): "
                        "extrapolated from the nearest table points, labelled 'lut-extrap'; rerun `hadmc-deploy lut` for this model to measure them"
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

    def context_applies(self, specs: list[LayerSpec]) -> bool:
        ctx = self.table.context
        return ctx is not None and len(specs) == len(ctx.signature) and all(sp.shape_key() == k for sp, k in zip(specs, ctx.signature, strict=True))

    def predict(self, specs: list[LayerSpec]) -> Prediction:
        raw = [self.layer_ms(s) for s in specs]
        kinds = [k for _, k in raw]
        notes = []
        ctx = self.table.context
        if ctx is not None and self.context_applies(specs):
            per_layer = [context_layer_ms(f, sp, ctx.step, ms) for f, sp, (ms, _) in zip(ctx.factors, specs, raw, strict=True)]
            offset = ctx.overhead_ms
            notes.append("per-layer costs from profiled whole deployed graphs (context correction)")
        else:
            if ctx is not None:
                notes.append("the table's per-layer context correction is for another graph: whole-model correction used")
            corr = self.table.correction
            scale, offset = (corr.scale, corr.offset_ms) if corr is not None else (1.0, 0.0)
            per_layer = [scale * ms for ms, _ in raw]
        total = float(sum(per_layer) + offset)
        fb = self.table.feedback
        if fb is not None and (fb.scale != 1.0 or fb.offset_ms != 0.0):  # a record of hits alone moves nothing
            total = fb.apply(total)
            notes.append(f"feedback from measured builds: x{fb.scale:.3f} {fb.offset_ms:+.3f} ms")
        n_analytic = kinds.count("analytic")
        if n_analytic == 0:
            source = "lut"
        elif n_analytic == len(kinds):
            source = "analytic"
        else:
            source = "lut+analytic"
        if n_analytic:
            notes.append(f"{n_analytic} of {len(kinds)} layers priced by the analytic model (not in the table)")
        if "lut-extrap" in kinds:
            notes.append(f"{kinds.count('lut-extrap')} layers extrapolated outside the measured channel range")
        return Prediction(
            total_ms=total,
            per_layer_ms=per_layer,
            source=source,
            overhead_ms=offset,
            per_layer_source=kinds,
            notes=notes,
        )

    def without_feedback(self) -> LutLatencyModel:
        """The same table without its `feedback`: what feedback is fitted against."""
        import copy

        table = copy.deepcopy(self.table)
        table.feedback = None
        return LutLatencyModel(table, self.fallback, source=self.source, ui=self.ui)

    def corrected_with(self, measurements: list[tuple[list[LayerSpec], float]], *, scale_only: bool = False,
                       history: Sequence[dict[str, Any]] = ()) -> LutLatencyModel:
        """A copy whose predictions absorb measured whole-model latencies [(specs of a plan, measured ms)].

        For the build's self-check: after a miss, the baseline's and the chosen plan's
        measurements feed a regularised `feedback` (see `fit_regularised`; `scale_only`: the
        median ratio alone, clipped), applied on top of everything else, so a re-search prices
        plans on the measured scale. `history`: earlier points ({"predicted_ms": without
        feedback, "measured_ms", ...}, e.g. the table's feedback.fitted_on from earlier builds)
        fitted together with these, so one build timed in a slow spell of a shared machine does
        not set the scale alone.
        """
        base = self.without_feedback()
        table = base.table
        points = [dict(h) for h in history]
        points += [{"predicted_ms": base.predict(specs).total_ms, "measured_ms": float(m)} for specs, m in measurements]
        fit = fit_regularised([float(p["predicted_ms"]) for p in points], [float(p["measured_ms"]) for p in points], scale_only=scale_only)
        table.feedback = Correction(fit.scale, fit.offset_ms, [{**p, "how": fit.how} for p in points])
        return LutLatencyModel(table, self.fallback, source=self.source, ui=self.ui)

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
            "staircase": None if self.table.staircase is None else self.table.staircase.to_dict(),
            "context": None if self.table.context is None else {"overhead_ms": self.table.context.overhead_ms, "fitted_on": self.table.context.fitted_on},
            "feedback": None if self.table.feedback is None else self.table.feedback.to_dict(),
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


def _regime_and_size(factors: dict[str, Any], spec: LayerSpec, step: int) -> tuple[str, float]:
    """("aligned" or "unaligned", the layer's size: its MACs over its MACs at full width, padded
    where the fit read a padding kernel, `blocking.regime_and_size`)."""
    full_in, full_out = int(factors.get("full_in", 0)), int(factors.get("full_out", 0))
    aligned, size = regime_and_size(spec, full_in, full_out, step, factors.get("blocking"))
    return ("aligned" if aligned else "unaligned"), size


def context_factor(factors: dict[str, Any], spec: LayerSpec, step: int) -> float:
    """The layer's in-context factor for its regime at `spec`'s widths (see ContextCorrection):
    interpolated on the regime's curve over the layer's size when the table has one (linear
    between profiled sizes, flat beyond them), else the regime's single factor."""
    regime, size = _regime_and_size(factors, spec, step)
    curve = factors.get(f"{regime}_curve")
    if not curve:
        return float(factors[regime])
    return _interp(size, [(float(p[0]), float(p[1])) for p in curve])


def context_layer_ms(factors: dict[str, Any], spec: LayerSpec, step: int, table_ms: float) -> float:
    """The layer's in-context cost at `spec`'s widths: the regime's fitted channel form where
    the context fit kept one (`{regime}_form`: grouped convs, latency/channel_form.py), else its
    profiled in-context times of the regime interpolated over its size (`{regime}_ms_curve`, see
    `interp_context_ms`) when the table has them, else its factor times `table_ms` (its isolated
    table price).

    Why the times and not factor x table price: the isolated price of a tiny layer moves 10-30%
    between two tables of one machine (the run overhead dominates), and a factor fitted at the
    profiled sizes carried that noise into every width between them. Interpolating the in-context
    times themselves halved the gap between two tables' predictions and the error on held-out
    plans of most validation cells (docs/latency_model.md)."""
    regime, size = _regime_and_size(factors, spec, step)
    form = factors.get(f"{regime}_form")
    if form:  # a grouped conv whose cost the MACs-fraction curve misprices (latency/channel_form.py)
        full_in, full_out = int(factors.get("full_in", 0)), int(factors.get("full_out", 0))
        if full_in and full_out:
            return form_ms(form, spec.in_channels / full_in, spec.out_channels / full_out)
    curve = factors.get(f"{regime}_ms_curve")
    if curve:
        return interp_context_ms(size, [(float(p[0]), float(p[1])) for p in curve])
    return context_factor(factors, spec, step) * table_ms


def interp_context_ms(size: float, points: list[tuple[float, float]]) -> float:
    """In-context ms at `size` from sorted (size, ms) points: linear between them; beyond the
    largest, the line through the last two (never below the last point: a cost that fell with
    size is not extrapolated to fall further); below the smallest, the line through the first
    two, never below the cost proportional to MACs (a layer does not get cheaper faster than its
    work shrinks); one point: proportional to MACs."""
    if len(points) == 1:
        s0, t0 = points[0]
        return t0 * size / s0 if s0 > 0 else t0
    (s0, t0), (s1, t1) = points[0], points[1]
    if size < s0:
        line = t0 + (t1 - t0) * (size - s0) / (s1 - s0)
        return max(line, t0 * size / s0 if s0 > 0 else 0.0)
    (sa, ta), (sb, tb) = points[-2], points[-1]
    if size > sb:
        return max(tb, tb + (tb - ta) * (size - sb) / (sb - sa))
    return _interp(size, points)


def _interp(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise-linear through sorted (x, y) points, flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    i = bisect.bisect_right([p[0] for p in points], x)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class RegularisedFit:
    """measured ~= scale * predicted + offset_ms, and how it was obtained."""

    def __init__(self, scale: float, offset_ms: float, how: str) -> None:
        self.scale, self.offset_ms, self.how = scale, offset_ms, how


#: a fitted scale outside this range is refused (clipped to a pure ratio, itself clipped).
SCALE_RANGE = (0.33, 3.0)
#: predicted totals closer than this (relative) cannot separate scale from offset.
MIN_RELATIVE_SPAN = 0.2


def fit_regularised(predicted_ms: list[float], measured_ms: list[float], *, scale_only: bool = False) -> RegularisedFit:
    """A correction that cannot extrapolate to absurd values.

    With `scale_only`, the median ratio alone. Scale and offset are fitted together only when the predictions span at least
    MIN_RELATIVE_SPAN of their mean and the result is sane (scale in SCALE_RANGE,
    |offset| below half the smallest measurement); otherwise only the median ratio
    is kept (offset 0), itself clipped to SCALE_RANGE. Three near-identical plans
    once gave scale 2.49, offset -13.35 ms; this returns their ratio instead.
    """
    if not predicted_ms or len(predicted_ms) != len(measured_ms):
        raise ValueError("need as many predictions as measurements, at least one")
    ratio = statistics.median(m / p for p, m in zip(predicted_ms, measured_ms, strict=True) if p > 0) if any(p > 0 for p in predicted_ms) else 1.0
    lo, hi = SCALE_RANGE
    clipped = min(max(ratio, lo), hi)
    how = "ratio" if clipped == ratio else f"ratio clipped to [{lo}, {hi}]"
    mx = statistics.fmean(predicted_ms)
    if scale_only or len(predicted_ms) < 2 or (max(predicted_ms) - min(predicted_ms)) < MIN_RELATIVE_SPAN * mx:
        return RegularisedFit(clipped, 0.0, how)
    scale, offset = fit_correction(predicted_ms, measured_ms)
    if lo <= scale <= hi and abs(offset) <= 0.5 * min(measured_ms):
        return RegularisedFit(scale, offset, "least squares")
    return RegularisedFit(clipped, 0.0, how + " (least-squares fit refused: out of range)")
