"""The channel-group table that `hadmc-deploy inspect` prints (the pruner's view of a model)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.loading import LoadedModel
from hadmc_deploy.ui import UI


def describe_groups(loaded: LoadedModel, shape: tuple[int, ...], args: argparse.Namespace, ui: UI, graph: DependencyGraph | None = None) -> dict[str, Any]:
    """Print the channel groups of `graph` (traced from `loaded.model` at `shape` if not given) as JSON-ready dicts."""
    if graph is None:
        from hadmc_deploy.graph.trace import trace

        graph = trace(loaded.model, shape, ignore=getattr(args, "ignore", None) or (), ui=ui)
    table = Table(title="channel groups")
    for col, justify in (("group", "left"), ("width", "right"), ("prunable", "left"), ("step", "right"), ("members", "right"), ("tensors (first 3) / why not", "left")):
        table.add_column(col, justify=justify)
    groups = []
    for g in graph.groups:
        tensors = [f"{m['tensor']}[{m['axis']}]" for m in g.members if m["role"] in ("out", "in")]
        detail = ", ".join(tensors[:3]) + (f" (+{len(tensors) - 3})" if len(tensors) > 3 else "")
        if g.reason:
            detail = f"{g.reason}; {detail}" if g.prunable else g.reason
        status = "yes" if g.prunable and g.exact else ("approx." if g.prunable else "no")
        table.add_row(g.id, str(g.width), status, str(g.granularity), str(len(g.members)), detail)
        groups.append(g.to_dict())
    ui.out.print(table)
    ui.out.print(f"{len(graph.prunable_groups)} of {len(graph.groups)} groups prunable; {len(graph.layers)} costed layers")
    return {"groups": groups, "costed_layers": [{"name": layer.name, **layer.spec.to_dict()} for layer in graph.layers], "graph_warnings": graph.warnings}
