"""Which whole plans the context fit profiles (latency/context.py): full width, uniform plans on
the step's grid (and, for grouped convs, aligned per group), and off-grid plans, so that every
weighted layer is seen at several sizes in both regimes."""

from __future__ import annotations

from typing import Any

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.alignment import blocked_layout_width, grid_step
from hadmc_deploy.latency.lut import LatencyTable

#: uniform width fractions profiled on the step's grid, and at odd widths (when the step is
#: > 1): the range a search explores, both regimes of every layer. The off-grid 0.9 plan since
#: measured-v18: with only 0.75 and 0.45 a layer's off-grid cost above 0.75 was extrapolated on the
#: line through those two, while it flattens towards full width (MobileNetV2 INT8 at 224, batch 1:
#: 1.31 / 1.92 / 2.05 ms at 0.45 / 0.75 / 0.9), and random unaligned plans with groups up to full
#: width had their time over the full model's priced 9-17% high in three validations (2026-12-03
#: 09:50, 12:05, 14:10); judged with `tools/ablate_context_plans.py --cell mobilenet_v2:int8:1
#: --offgrid 0.9` and on eight more cells (docs/latency_model.md, "Method v18").
ALIGNED_FRACTIONS = (0.7, 0.5, 0.3)
OFFGRID_FRACTIONS = (0.9, 0.75, 0.45)
#: for graphs with grouped convs: prunable groups alternately at these fractions (and the other
#: way round), at odd widths: each layer's input and output channels apart, which the channel
#: form of a grouped conv needs (latency/channel_form.py).
CROSSED_FRACTIONS = (0.85, 0.45)


def _legal_width(g: Any, w: int) -> int:
    if g.granularity > 1:
        w = max(g.granularity, (w // g.granularity) * g.granularity)
    return min(g.width, max(w, g.min_width, 1))


def _odd_width(g: Any, frac: float) -> int:
    w = max(g.min_width, round(g.width * frac))
    if w % 2 == 0:  # odd: off every step > 1, not only this one
        w -= 1
    return _legal_width(g, w)


def offgrid_plan(graph: DependencyGraph, frac: float) -> dict[str, int]:
    """Every prunable group at an odd width near `frac` of its width: off every step > 1."""
    return {g.id: _odd_width(g, frac) for g in graph.prunable_groups}


def crossed_plan(graph: DependencyGraph, even: float, odd: float) -> dict[str, int]:
    """Prunable groups in graph order alternately at fractions `even` and `odd`, at odd widths."""
    return {g.id: _odd_width(g, even if k % 2 == 0 else odd) for k, g in enumerate(graph.prunable_groups)}


def calibration_plans(graph: DependencyGraph, step: int) -> dict[str, dict[str, int]]:
    """Full width, uniform plans on the step's grid (for grouped convs also on groups x step: their
    aligned regime), and off-grid plans (every prunable group at an odd width, off every step > 1)
    when there is a step: each layer's in-context times over its size, in both regimes; for graphs
    with grouped convs also two crossed plans (`CROSSED_FRACTIONS`). Plans that come out identical
    (tiny groups) are profiled once."""
    def on_grid(frac: float, per_group: bool) -> dict[str, int]:
        widths = {}
        for g in graph.prunable_groups:
            unit = step * max(g.granularity, 1) if per_group else step
            widths[g.id] = _legal_width(g, max(unit, int(round(g.width * frac / unit)) * unit))
        return widths

    plans: dict[str, dict[str, int]] = {"full": graph.full_widths()}
    for frac in ALIGNED_FRACTIONS:
        plans[f"aligned{int(frac * 100)}"] = on_grid(frac, per_group=False)
    if any(g.granularity > 1 for g in graph.prunable_groups):
        # a group of granularity k (a grouped conv's groups) is aligned only at multiples of k x step,
        # its channels per group on the step (alignment.counts_aligned): the plans above leave it
        # unaligned (what `--round-to step` gives), these profile its aligned regime below full width
        for frac in ALIGNED_FRACTIONS:
            plans[f"pergroup{int(frac * 100)}"] = on_grid(frac, per_group=True)
    if step > 1:
        for frac in OFFGRID_FRACTIONS:
            plans[f"offgrid{int(frac * 100)}"] = offgrid_plan(graph, frac)
    if any(layer.spec.op == "gconv" for layer in graph.layers):
        high, low = CROSSED_FRACTIONS
        plans["crossed"] = crossed_plan(graph, high, low)
        plans["crossed-reverse"] = crossed_plan(graph, low, high)
    unique: dict[str, dict[str, int]] = {}
    for name, widths in plans.items():
        if not any(same_plan(graph, widths, seen) for seen in unique.values()):
            unique[name] = widths
    return unique


def same_plan(graph: DependencyGraph, a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two plans give every group the same width (a group a plan leaves out is at full
    width). Why: a per-group plan of a small grouped CNN named only its prunable groups, all at
    full width, and was profiled as a second, different "full" plan."""
    full = graph.full_widths()
    return {**full, **a} == {**full, **b}


def context_step(table: LatencyTable) -> int:
    """The step whose regimes the context profiles: the staircase's when it found one, else the
    CPU's blocked-layout width (16 fp32 lanes with AVX-512, 8 otherwise). The isolated probe can
    miss a step that only shows in a chain: an aligned conv alone pays its own layout reorders,
    in a chain of aligned convs the blocked layout is kept and only unaligned ones pay them.

    An ONNX Runtime probe's step finer than the blocked width and dividing it is profiled at the
    blocked width: its multiples are multiples of the finer step too, and the finer regime lumped
    the two. A MobileNetV2 INT8 table at batch 32 whose probe found 4 (odd widths did pay in
    context) priced plans on multiples of 4 19-27% below what they measured, as slow as full
    width, while its plans on multiples of 16 ran at 60% of it."""
    step = grid_step(table)
    block = blocked_layout_width(table.meta.device)
    if table.meta.backend == "onnxruntime" and 1 < step < block and block % step == 0:
        return block
    return step
