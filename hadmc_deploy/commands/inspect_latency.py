"""`inspect --target/--lut`: predicted latency per layer, and where pruning buys the most time.

"Most time per channel" is priced the way the search sees it: for each prunable
group, the predicted saving of removing one alignment step of channels (fewer
channels than that usually save nothing: the staircase), divided by the channels
removed. The layers those groups size are marked.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from rich.table import Table

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency import load_latency_model
from hadmc_deploy.latency.alignment import grid_step
from hadmc_deploy.latency.predictor import LutLatencyModel
from hadmc_deploy.latency.stated_spread import stated_spread
from hadmc_deploy.targets import get_target
from hadmc_deploy.ui import UI

#: how many groups to mark as the best places to prune.
TOP_GROUPS = 5


def group_savings(model: Any, graph: DependencyGraph, precision: str, batch: int, align: int) -> list[dict[str, Any]]:
    """Per prunable group: predicted ms saved per channel when one alignment step is removed."""

    def price(widths: dict[str, int]) -> float:
        specs = [replace(s, precision=precision, batch=batch) for s in graph.layer_specs(widths)]
        return float(sum(model.predict(specs).per_layer_ms))

    full = graph.full_widths()
    base = price(full)
    rows = []
    for g in graph.prunable_groups:
        step = align if g.width - align >= max(g.min_width, 1) else 0
        if step == 0:
            continue
        saved = base - price({**full, g.id: g.width - step})
        rows.append({"group": g.id, "width": g.width, "removed": step, "saved_ms": saved, "ms_per_channel": saved / step})
    rows.sort(key=lambda r: r["ms_per_channel"], reverse=True)
    return rows


def describe_latency(loaded: Any, shape: tuple[int, ...], graph: DependencyGraph, args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    """Print and return per-layer predicted latency on `args.target` (with `args.lut` if given)."""
    target = get_target(getattr(args, "target", None) or "cpu", getattr(args, "targets_file", None))
    model = load_latency_model(target, getattr(args, "lut", None), force=bool(getattr(args, "force", False)), ui=ui)
    if isinstance(model, LutLatencyModel):
        precision = model.table.meta.precision
    else:
        precision = getattr(args, "precision", None) or target.default_precision
    batch = shape[0]
    # the measured step when the table has one (removing less than a step costs time there), else
    # the step its grid was measured on: one channel off it was timed slower than the full width
    # in tables whose probe saw no step (their off-grid points)
    align = grid_step(model.table) if isinstance(model, LutLatencyModel) else target.alignment(precision)
    specs = [replace(s, precision=precision, batch=batch) for s in graph.layer_specs()]
    pred = model.predict(specs)
    savings = group_savings(model, graph, precision, batch, align)
    best = {r["group"]: r for r in savings[:TOP_GROUPS] if r["saved_ms"] > 0}

    spread = stated_spread(model.table) if isinstance(model, LutLatencyModel) else None
    stated = "" if spread is None else f" +-{100 * spread:.1f}%"
    table = Table(title=f"predicted latency on {target.name} ({precision}, batch {batch}): {pred.total_ms:.3f} ms{stated} (source: {pred.source})", title_justify="left")
    for col, justify in (("layer", "left"), ("op", "left"), ("in->out", "right"), ("HxW", "right"), ("ms", "right"), ("%", "right"), ("how", "left"), ("prune here", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    layers = []
    for layer, spec, ms, how in zip(graph.layers, specs, pred.per_layer_ms, pred.per_layer_source or ["?"] * len(specs), strict=True):
        mark = ""
        if layer.out_group in best and spec.op in ("conv", "dwconv", "gconv", "convtranspose", "linear"):
            mark = f"* {best[layer.out_group]['ms_per_channel'] * 1e3:.2f} us/ch"
        table.add_row(layer.name, spec.op, f"{spec.in_channels}->{spec.out_channels}", f"{spec.in_hw[0]}x{spec.in_hw[1]}", f"{ms:.4f}", f"{100 * ms / max(pred.total_ms, 1e-12):.1f}", how, mark)
        layers.append({"name": layer.name, "op": spec.op, "in": spec.in_channels, "out": spec.out_channels, "ms": ms, "source": how, "group": layer.out_group, "best_to_prune": bool(mark)})
    ui.out.print(table)
    if pred.overhead_ms:
        ui.out.print(f"fixed per-run overhead (fitted): {pred.overhead_ms:+.3f} ms")
    for note in pred.notes:
        ui.out.print(f"note: {note}")
    if best:
        ui.out.print("most time per removed channel: " + ", ".join(f"{g} ({r['ms_per_channel'] * 1e3:.2f} us/ch)" for g, r in best.items()))
    return {
        "latency": {
            "model": model.describe(),
            "total_ms": pred.total_ms,
            "stated_spread": spread,
            "source": pred.source,
            "overhead_ms": pred.overhead_ms,
            "precision": precision,
            "layers": layers,
            "groups_by_saving": savings,
            "notes": pred.notes,
        }
    }
