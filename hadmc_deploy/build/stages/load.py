"""Stage 1, load: the model (safely), its parameter count, MACs and output layout."""

from __future__ import annotations

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import loaded_model
from hadmc_deploy.profile import profile_model


def run(ctx: BuildContext) -> StageResult:
    loaded = loaded_model(ctx)
    prof = profile_model(loaded.model, ctx.plan.input_shape)
    result = {
        "kind": loaded.kind,
        "source": loaded.source,
        "arch": loaded.arch,
        "arch_kwargs": loaded.arch_kwargs,
        "model_sha256": ctx.plan.model_sha256,
        "params": prof.params,
        "macs": prof.macs,
        "num_classes": prof.num_classes,
        "outputs": {name: list(shape) for name, shape in prof.output_shapes.items()},
        "_summary": f"{loaded.kind} via {loaded.arch}: {prof.params:,} params, {prof.macs:,} MACs",
    }
    prefix = (loaded.info or {}).get("stripped_key_prefix")
    if prefix:
        result["stripped_key_prefix"] = prefix
        result["_summary"] += f" (the prefix {prefix!r} on every key removed)"
    return StageResult(result)


def inputs(ctx: BuildContext) -> dict:
    plan = ctx.plan
    return {"model": plan.model_sha256, "arch": plan.arch, "arch_kwargs": plan.arch_kwargs, "input_shape": list(plan.input_shape)}


STAGE = Stage("load", run, inputs, (), dry_run=True)
