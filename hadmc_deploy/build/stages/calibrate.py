"""Stage 8, calibrate: activation ranges of every float model on the calibration data."""

from __future__ import annotations

from typing import Any

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import data_hash, dataset
from hadmc_deploy.build.variants import float_onnx, models, scales_name
from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.trt_cache import write_cache


def inputs(ctx: BuildContext) -> dict[str, Any]:
    int8 = ctx.plan.precision == "int8"
    d, q = ctx.settings.data, ctx.settings.quantization
    return {"precision": ctx.plan.precision, "calib": data_hash(ctx, "calib") if int8 else None, "method": q.calib_method, "samples": d.calib_samples}


def run(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: no INT8 calibration")
    data = dataset(ctx, "calib")
    method, samples = ctx.settings.quantization.calib_method, ctx.settings.data.calib_samples
    outputs, result = [], {}
    names = models(ctx)
    for model in names:
        ranges = collect_ranges(float_onnx(ctx, model), data, method=method, num_samples=samples, ui=ctx.ui)
        outputs.append(ranges.save(ctx.path(scales_name(model))))
        result[model] = {"tensors": len(ranges), "method": ranges.method, "num_samples": ranges.num_samples}
        if model == names[-1]:
            outputs.append(write_cache(ctx.path("calibration.cache"), ranges))
    result["_summary"] = f"{method} ranges on {result[names[-1]]['num_samples']} samples of {ctx.plan.calib_source}"
    return StageResult(result, outputs)


STAGE = Stage("calibrate", run, inputs, ("export",))
