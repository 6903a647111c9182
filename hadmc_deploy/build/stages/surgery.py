"""Stage 5, surgery: physically narrower modules from the width plan, saved as a safe checkpoint."""

from __future__ import annotations

import numpy as np

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import graph, loaded_model
from hadmc_deploy.build.stages.search import PLAN_FILE, SCORES_FILE
from hadmc_deploy.errors import GraphError
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.profile import profile_model
from hadmc_deploy.pruned_checkpoint import save_pruned
from hadmc_deploy.surgery import apply

PRUNED_FILE = "pruned.pth"


def run(ctx: BuildContext) -> StageResult:
    if not ctx.results["search"].get("pruned"):
        return StageResult({"pruned": False}, skipped="nothing to narrow: the width plan keeps every group")
    loaded = loaded_model(ctx)
    plan = WidthPlan.from_json(ctx.path(PLAN_FILE).read_text())
    with np.load(ctx.path(SCORES_FILE)) as npz:
        scores = {k: npz[k] for k in npz.files}
    pruned, filled = apply(loaded.model, graph(ctx), plan, scores=scores)
    pruned.eval()
    base = ctx.results["load"]
    before = profile_model(loaded.model, ctx.plan.input_shape)
    try:
        prof = profile_model(pruned, ctx.plan.input_shape)
    except Exception as exc:  # a wrong graph must never be saved
        cause = exc.__cause__ or exc  # profile_model words a failed run as a usage error; here it is the surgery's
        raise GraphError(f"the pruned model does not run ({type(cause).__name__}: {str(cause).splitlines()[0]})", hint="report this model; pass --ignore for the layers involved meanwhile") from exc
    if prof.output_shapes != before.output_shapes:
        raise GraphError(f"pruning changed the output shapes {before.output_shapes} -> {prof.output_shapes}")
    out = ctx.path(PRUNED_FILE)
    save_pruned(out, pruned, loaded, filled, ctx.plan.input_shape, extra={"stage": "surgery"})
    return StageResult(
        {
            "params": prof.params,
            "macs": prof.macs,
            "params_ratio": prof.params / base["params"],
            "macs_ratio": prof.macs / base["macs"],
            "keep": dict(filled.keep),
            "_summary": f"{base['params']:,} -> {prof.params:,} params ({100 * (1 - prof.params / base['params']):.1f}% fewer), MACs x{prof.macs / base['macs']:.2f}",
        },
        [out],
    )


STAGE = Stage("surgery", run, lambda c: {}, ("search",))
