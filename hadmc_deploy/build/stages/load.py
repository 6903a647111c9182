"""Stage 1, load: the model (safely), its parameter count, MACs and output layout."""

from __future__ import annotations

from hadmc_deploy.batch_check import check_batch_free
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import labels_of, loaded_model, task
from hadmc_deploy.build.metric import CLASSIFY
from hadmc_deploy.data import check_image_files, check_labels
from hadmc_deploy.profile import profile_model


def run(ctx: BuildContext) -> StageResult:
    loaded = loaded_model(ctx)
    prof = profile_model(loaded.model, ctx.plan.input_shape)
    check_batch_free(loaded.model, ctx.plan.input_shape)  # the build exports a dynamic batch axis: say so before any table is measured
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
    check_labelled_sources(ctx, prof.num_classes)
    reduced = (loaded.info or {}).get("converted_to_float32_from")
    if reduced:
        result["converted_to_float32_from"] = reduced
        result["_summary"] += f" (its {'/'.join(reduced)} weights converted to float32)"
    prefix = (loaded.info or {}).get("stripped_key_prefix")
    if prefix:
        result["stripped_key_prefix"] = prefix
        result["_summary"] += f" (the prefix {prefix!r} on every key removed)"
    baked = (loaded.info or {}).get("baked_reparametrizations")
    if baked:
        result["baked_reparametrizations"] = baked
        result["_summary"] += f" ({len(baked)} weight-/spectral-normed weights baked into plain weights)"
    return StageResult(result)


def inputs(ctx: BuildContext) -> dict:
    plan = ctx.plan
    return {"model": plan.model_sha256, "arch": plan.arch, "arch_kwargs": plan.arch_kwargs, "input_shape": list(plan.input_shape)}


def check_labelled_sources(ctx: BuildContext, num_classes: int | None) -> None:
    """--train and --eval labels against the model's classes, read without the images, and every file
    of an image-folder source opened as an image, before any heavy stage: data is otherwise loaded,
    and checked, when the recovery stage first reads it, after the latency table and the search
    (minutes for a large model)."""
    if task(ctx) != CLASSIFY:
        return
    d = ctx.settings.data
    for role, source in (("train", d.train), ("eval", d.eval)):
        if source:
            check_labels(source, labels_of(ctx, source), role, num_classes)
    for source in dict.fromkeys(s for s in (d.train, d.eval, d.calib) if s):
        check_image_files(source)


STAGE = Stage("load", run, inputs, (), dry_run=True)
