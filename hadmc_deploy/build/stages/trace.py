"""Stage 2, trace: the channel dependency graph (coupled groups, costed layers) as graph.json."""

from __future__ import annotations

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import graph
from hadmc_deploy.errors import GraphError
from hadmc_deploy.fileio import write_json_atomic


def run(ctx: BuildContext) -> StageResult:
    g = graph(ctx)
    if ctx.settings.search.has_budget and not g.prunable_groups:
        reasons = sorted({grp.reason for grp in g.groups if grp.reason})
        raise GraphError(f"nothing in this model can be pruned ({'; '.join(reasons[:3])})", hint="see `hadmc-deploy inspect` for the channel groups")
    out = ctx.path("graph.json")
    layers = [{"name": layer.name, "spec": layer.spec.to_dict(), "in_groups": list(layer.in_groups), "out_group": layer.out_group} for layer in g.layers]
    write_json_atomic(out, {"input_shape": list(g.input_shape), "groups": [grp.to_dict() for grp in g.groups], "layers": layers, "warnings": list(g.warnings)})
    for warning in g.warnings:
        ctx.ui.warn(warning)
    prunable = len(g.prunable_groups)
    return StageResult(
        {"groups": len(g.groups), "prunable": prunable, "layers": len(g.layers), "warnings": list(g.warnings), "_summary": f"{len(g.groups)} channel groups ({prunable} prunable), {len(g.layers)} costed layers"},
        [out],
    )


STAGE = Stage("trace", run, lambda c: {"ignore": list(c.settings.search.ignore), "budget": c.settings.search.has_budget}, ("load",), dry_run=True)
