"""Stage 8, calibrate: activation ranges of every float model on the calibration data (the
`auto` method by default: per tensor, the range whose quantization error on held-out
samples is smallest), saved as scales.json and reused by the quantize stage."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import data_hash, dataset
from hadmc_deploy.build.variants import float_onnx, models, scales_name
from hadmc_deploy.calibration.collect import calibration_subset, load_or_collect
from hadmc_deploy.calibration.ranges import ActivationRanges


def inputs(ctx: BuildContext) -> dict[str, Any]:
    int8 = ctx.plan.precision == "int8"
    d, q = ctx.settings.data, ctx.settings.quantization
    return {"precision": ctx.plan.precision, "calib": data_hash(ctx, "calib") if int8 else None, "method": q.calib_method,
            "samples": d.calib_samples, "form": ctx.plan.target.int8_form}


def run(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: no INT8 calibration")
    data = dataset(ctx, "calib")
    method, samples = ctx.settings.quantization.calib_method, ctx.settings.data.calib_samples
    outputs, result = [], {}
    names = models(ctx)
    form = ctx.plan.target.int8_form
    for model in names:
        path, onnx_path = ctx.path(scales_name(model)), float_onnx(ctx, model)

        def collect(into: Path, onnx_path: Path = onnx_path) -> None:
            load_or_collect(onnx_path, data, method, into, num_samples=samples, form=form, ui=ctx.ui)

        def kept(stored: Path, path: Path = path) -> ActivationRanges:
            ranges = ActivationRanges.load(stored)
            shutil.copyfile(stored, path)
            return ranges

        if ctx.cache.enabled:  # the same graph on the same images: ranges an earlier build collected
            key = reuse.file_key("ranges", onnx_path, images=calibration_subset(data, samples).sha256(), method=method, samples=samples, form=form)
            ranges, earlier_build = reuse.reused("ranges", key, collect, kept, ".json")
            reused = earlier_build
        else:
            (ranges, reused), earlier_build = load_or_collect(onnx_path, data, method, path, num_samples=samples, form=form, ui=ctx.ui), False
        outputs.append(path)
        result[model] = {"tensors": len(ranges), "method": ranges.method, "method_counts": ranges.method_counts(), "num_samples": ranges.num_samples,
                         "reused": reused, "from_earlier_build": earlier_build}
    earlier = [m for m in names if result[m]["from_earlier_build"]]
    result["_summary"] = f"{method} ranges on {result[names[-1]]['num_samples']} samples of {ctx.plan.calib_source}" + (
        f" ({', '.join(earlier)}: from an earlier build)" if earlier else "")
    return StageResult(result, outputs)


STAGE = Stage("calibrate", run, inputs, ("export",))
