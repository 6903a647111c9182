"""The channel staircase, measured: which counts run the fast kernels, and what the others cost.

A backend runs channel counts that are multiples of its block (ONNX Runtime's
NCHWc block: 16 floats with AVX-512, 8 with AVX2; INT8 kernels their own) in
blocked kernels and everything else in slower generic ones, plus layout
reorders. The step differs per machine, backend and precision, so it is probed:
one representative layer per op kind is swept in unit steps of channels over a
window holding three multiples of the largest candidate step, timed in
interleaved passes, and the step and the shape of the stair are fitted (see
`detect_step`). No monotonicity in width is
assumed anywhere (INT8 convs with 8 output channels ran slower than with 16).
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.input_step import detect_input_step
from hadmc_deploy.latency.lut import LatencyTable, Staircase
from hadmc_deploy.latency.repeat import Preparer, SpeedGate, time_interleaved
from hadmc_deploy.specs import LayerSpec, round_up

#: 32 is no candidate: a 33-count window holds only two multiples of it, its two ends, which
#: are no evidence of a step (see detect_step)
CANDIDATE_STEPS = (16, 8, 4, 2)
#: sweep window: three multiples of the largest candidate step.
WINDOW = 32
#: ops whose kernels are blocked on channels (elementwise ops and pools follow their producer).
WEIGHTED_OPS = ("conv", "gconv", "dwconv", "linear", "convtranspose")
#: the smallest step the "pad" shape is tried at (see detect_step).
PAD_MIN_STEP = 8
#: half-way counts must run this much slower than the aligned line to call a step real.
TOLERANCE = 0.08


def blocked_layout_width(device: dict) -> int:
    """The CPU's blocked-layout width (ONNX Runtime's NCHWc block): 16 fp32 lanes with AVX-512,
    8 otherwise, from the ISA the device fingerprint detected at run time. Used where the
    isolated probe finds no step: an aligned conv timed alone pays its own layout reorders, while
    in a chain of aligned convs the blocked layout is kept and only unaligned ones pay them."""
    return 16 if "avx512" in str((device or {}).get("isa", "")) else 8


def counts_aligned(spec: LayerSpec, full_in: int, full_out: int, step: int) -> bool:
    """Whether the layer runs in the aligned regime of `step`: each channel count at its full
    width or a multiple of `step`, per group for a grouped conv. Why per group: ONNX Runtime
    blocks a grouped conv only when its input and output channels per group are multiples of
    the block (its NchwcTransformer); a grouped CNN at 128 -> 96 channels in 4 groups (24 per
    group, a multiple of 8 in total) measured slower than at full width."""
    per_group = max(spec.groups, 1) if spec.op == "gconv" else 1
    return all(c == full or (c % per_group == 0 and (c // per_group) % step == 0)
               for c, full in ((spec.in_channels, full_in), (spec.out_channels, full_out)))


def size_fraction(spec: LayerSpec, full_in: int, full_out: int) -> float:
    """The layer's MACs at `spec`'s widths over its MACs at full width (the axis of the context's
    curves; 1.0 where the full width is unknown or does no work)."""
    full_macs = spec.with_channels(full_in, full_out).macs() if full_in and full_out else 0
    return spec.macs() / full_macs if full_macs > 0 else 1.0


def grid_step(table: LatencyTable) -> int:
    """The channel step a table's grid is measured on (and the context's regimes profiled at): its
    measured step, else the CPU's blocked width. Where nothing measured a step (a table without
    the context fit), this is still the step whose multiples the table knows best."""
    step = table.alignment()
    return step if step > 1 else blocked_layout_width(table.meta.device)


def _line(points: dict[int, float], aligned: list[int], c: int) -> float:
    lo = max(a for a in aligned if a <= c)
    hi = min(a for a in aligned if a >= c)
    if lo == hi:
        return points[lo]
    t = (c - lo) / (hi - lo)
    return (1 - t) * points[lo] + t * points[hi]


def _reference(times: dict[int, float], aligned: list[int], c: int, s: int, mode: str) -> float:
    """What an unaligned count costs before its penalty: its padded count ("pad") or the line ("line")."""
    return times[round_up(c, s)] if mode == "pad" else _line(times, aligned, c)


def _residual(times: dict[int, float], cs: list[int], ref: dict[int, float]) -> tuple[float, float]:
    """(median ratio = the penalty, mean |relative error| after applying it: a median error would
    hide a model that misprices half of the points)."""
    ratios = [times[c] / ref[c] for c in cs]
    pen = statistics.median(ratios)
    return pen, statistics.fmean(abs(r / pen - 1.0) for r in ratios)


def detect_step(times: dict[int, float], candidates: tuple[int, ...] = CANDIDATE_STEPS, tolerance: float = TOLERANCE) -> tuple[int, float, str]:
    """(step, penalty, mode) from unit-step times {channels: ms}; (1, 1.0, "line") when no step shows.

    Two staircase shapes are seen: "pad" (an unaligned count costs about what the next
    multiple costs: the kernel pads) and "line" (it leaves the blocked kernel and costs
    `penalty` times the line between its aligned neighbours). For every candidate step
    both are fitted to the unaligned counts inside the window (the half-way counts must
    fit like the others); the step is the largest whose fit is within 50% (+1 point) of the
    best candidate's.

    A candidate counts as evidence of a step only when (each rule answers a step that the next
    probe of the same layer, minutes later, did not repeat; docs/latency_model.md):
    - the window holds an aligned count besides its two ends (else its "line" is the no-step
      line times a constant);
    - its unaligned counts cost more than the line through their aligned neighbours ("line"),
      or about what their padded count costs ("pad"): an inverted ripple, aligned counts
      slower (INT8 convs here, at multiples of 4), is no reason to round up to them.
    The best candidate must also fit clearly better than a straight line through the window's
    ends without any step.
    """
    lo, hi = min(times), max(times)
    inner = [c for c in times if lo < c < hi]
    if not inner:
        return 1, 1.0, "line"
    smooth = {c: _line(times, [lo, hi], c) for c in inner}
    base_pen, base_err = _residual(times, inner, smooth)
    fits: list[tuple[int, float, str, float]] = []
    for s in candidates:
        aligned = sorted(c for c in times if c % s == 0)
        if len(aligned) < 3 or aligned[0] != lo or aligned[-1] != hi:
            continue
        cs = [c for c in inner if c % s]
        if not cs:
            continue
        half = [c for c in cs if c % s == s // 2]
        # "pad" at a step of 2 or 4 says "a count costs what its neighbour costs": true of any
        # smooth curve, so it is no evidence of a step
        for mode in ("pad", "line") if s >= PAD_MIN_STEP else ("line",):
            ref = {c: _reference(times, aligned, c, s, mode) for c in cs}
            pen, err = _residual(times, cs, ref)
            # the half-way counts must behave like the other unaligned ones: otherwise a finer
            # step is the real one (a median fit alone would overlook its few aligned counts)
            if half and abs(statistics.median(times[c] / ref[c] for c in half) / pen - 1.0) > max(2 * err, tolerance):
                continue
            if (mode == "line" and pen < 1.0 + tolerance) or (mode == "pad" and pen < 1.0 - tolerance):
                continue
            fits.append((s, pen, mode, err))
    if not fits:
        return 1, 1.0, "line"
    best = min(f[3] for f in fits)
    # a small error of the no-step line hides a real step only when the inner counts as a whole
    # cost unlike the window's (aligned) ends: a sparse staircase, whose few aligned counts a
    # mean error barely sees
    if best > (1.0 - tolerance) * base_err and (base_err > tolerance / 2 or abs(base_pen - 1.0) < tolerance):
        return 1, 1.0, "line"
    s, pen, mode, _ = max((f for f in fits if f[3] <= 1.5 * best + 0.01), key=lambda f: (f[0], -f[3]))
    return s, pen, mode


def _axes(layer, graph: DependencyGraph) -> tuple[bool, bool]:  # noqa: ANN001
    prunable = {g.id for g in graph.groups if g.prunable}
    return any(g in prunable for g in layer.in_groups), layer.out_group in prunable


def representative_layers(graph: DependencyGraph, precision: str, batch: int) -> dict[str, tuple[str, LayerSpec, str]]:
    """Per weighted op kind: (layer name, spec at full width, axis to sweep), the median-MACs layer
    among those with a prunable output (else input) axis: typical, and cheap enough to sweep."""
    full = graph.full_widths()
    chosen: dict[str, tuple[str, LayerSpec, str]] = {}
    by_op: dict[str, list[tuple[int, str, LayerSpec, str]]] = {}
    for layer in graph.layers:
        spec = replace(layer.spec_at(full), precision=precision, batch=batch)
        if spec.op not in WEIGHTED_OPS:
            continue
        has_in, has_out = _axes(layer, graph)
        axis = "out" if has_out and spec.op != "dwconv" else ("in" if has_in else "")
        if spec.op == "dwconv" and (has_in or has_out):
            axis = "in"
        if axis:
            by_op.setdefault(spec.op, []).append((spec.macs(), layer.name, spec, axis))
    for op, rows in by_op.items():
        rows.sort(key=lambda r: r[0])
        _, name, spec, axis = rows[len(rows) // 2]
        chosen[op] = (name, spec, axis)
    return chosen


def sweep_specs(spec: LayerSpec, axis: str) -> list[LayerSpec]:
    """Unit steps over a window of WINDOW+1 counts starting at a multiple of WINDOW near the layer's width."""
    width = spec.out_channels if axis == "out" else spec.in_channels
    start = max(WINDOW, WINDOW * ((width - WINDOW // 2) // WINDOW))
    out = []
    unit = max(spec.groups, 1) if spec.op == "gconv" else 1  # grouped convs: counts divisible by the groups
    for c in range(start, start + WINDOW + 1, unit):
        if spec.op == "dwconv":
            out.append(spec.with_channels(c, c))
        elif axis == "out":
            out.append(spec.with_channels(spec.in_channels, c))
        else:
            out.append(spec.with_channels(c, spec.out_channels))
    return out


def probe_staircase(
    graph: DependencyGraph,
    prepare: Preparer,
    *,
    precision: str,
    batch: int,
    passes: int = 3,
    runs_per_pass: int = 3,
    deadline: float | None = None,
    anchor: SpeedGate | None = None,
) -> tuple[Staircase, list[tuple[LayerSpec, float, float]]]:
    """Sweep one layer per weighted op kind; (staircase, [(spec, mom ms, spread)] of every probe point).

    The table-wide step and penalty are those of the conv sweep (the bulk of a CNN's
    time), else of the first op swept; no sweep at all gives step 1, penalty 1. A plain conv whose
    output sweep shows a padding kernel is swept on its inputs too (`per_op["conv"]["input"]`: the
    input step that kernel takes, `input_step.detect_input_step`), in two passes fewer: the reader
    classifies each count against a 15% threshold, and with full passes an FP32 ResNet-18 table at
    batch 32 took 429 s where one without the sweep took 388 s (two noisy runs of the 16 cells,
    docs/latency_model.md "Method v19").
    """
    per_op: dict[str, dict] = {}
    points: list[tuple[LayerSpec, float, float]] = []
    for op, (name, spec, axis) in representative_layers(graph, precision, batch).items():
        specs = sweep_specs(spec, axis)
        timed = time_interleaved(specs, prepare, passes=passes, runs_per_pass=runs_per_pass, chunk=len(specs), deadline=deadline, anchor=anchor)
        if len(timed) < len(specs):
            break
        times = {(s.out_channels if axis == "out" else s.in_channels): r.mom_ms for s, r in timed}
        step, penalty, mode = detect_step(times)
        per_op[op] = {"step": step, "penalty": round(penalty, 4), "mode": mode, "layer": name, "axis": axis, "window": [min(times), max(times)]}
        points += [(s, r.mom_ms, r.spread) for s, r in timed]
        if op == "conv" and axis == "out" and mode == "pad" and step > 1:
            # a kernel that pads its outputs may take inputs on a finer step (latency/blocking.py)
            in_specs = sweep_specs(spec, "in")
            in_timed = time_interleaved(in_specs, prepare, passes=max(passes - 2, 2), runs_per_pass=runs_per_pass, chunk=len(in_specs), deadline=deadline, anchor=anchor)
            if len(in_timed) == len(in_specs):
                in_times = {s.in_channels: r.mom_ms for s, r in in_timed}
                per_op[op]["input"] = {"step": detect_input_step(in_times, step), "window": [min(in_times), max(in_times)]}
                points += [(s, r.mom_ms, r.spread) for s, r in in_timed]
    main = per_op.get("conv") or next(iter(per_op.values()), None)
    if main is None:
        return Staircase(1, 1.0, {}), points
    return Staircase(int(main["step"]), float(main["penalty"]), per_op, str(main["mode"])), points


def off_grid_specs(graph: DependencyGraph, step: int, *, precision: str, batch: int) -> list[LayerSpec]:
    """Per weighted layer, its full width minus one channel on each prunable axis (when the full
    width is a multiple of `step`): prices that layer's own unaligned penalty."""
    if step <= 1:
        return []
    full = graph.full_widths()
    out: dict[str, LayerSpec] = {}
    for layer in graph.layers:
        spec = replace(layer.spec_at(full), precision=precision, batch=batch)
        if spec.op not in WEIGHTED_OPS:
            continue
        has_in, has_out = _axes(layer, graph)
        if spec.op == "dwconv":
            if (has_in or has_out) and spec.in_channels % step == 0 and spec.in_channels > 1:
                s = spec.with_channels(spec.in_channels - 1, spec.in_channels - 1)
                out.setdefault(s.key(), s)
            continue
        unit = max(spec.groups, 1) if spec.op == "gconv" else 1
        if has_out and spec.out_channels % step == 0 and spec.out_channels > unit and unit < step:
            s = spec.with_channels(spec.in_channels, spec.out_channels - unit)
            out.setdefault(s.key(), s)
        if has_in and spec.in_channels % step == 0 and spec.in_channels > 1 and spec.op != "gconv":
            s = spec.with_channels(spec.in_channels - 1, spec.out_channels)
            out.setdefault(s.key(), s)
    return list(out.values())
