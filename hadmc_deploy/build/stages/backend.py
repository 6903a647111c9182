"""Stage 10, backend build: every variant as an artifact of the target's backend, or, where
that backend is missing here (TensorRT without a GPU), the portable artifacts and the command
that finishes the build on the target host (plus CPU artifacts with --fallback cpu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.backends import Backend, BuildRequest, get
from hadmc_deploy.backends.tensorrt_artifact import fallback_message
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.variants import all_variants, float_onnx, models, qdq_name, scales_name, variant_name
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.errors import BackendUnavailableError
from hadmc_deploy.targets import TargetProfile, get_target


def inputs(ctx: BuildContext) -> dict[str, Any]:
    ok, reason = get(ctx.plan.target.backend).available()
    out = ctx.settings.output
    return {"backend": ctx.plan.target.backend, "available": ok, "why": reason, "batch": list(ctx.plan.batch_sizes), "fallback": out.fallback}


def build_variants(ctx: BuildContext, backend: Backend, target: TargetProfile) -> list[dict[str, Any]]:
    """Build every variant with `backend` for `target` (the plan's target, or the CPU fallback).

    One typed request per variant; each backend picks its own INT8 input from what the
    request offers (QDQ graph in the plan target's form, ranges, TensorRT calibration cache).
    """
    quant = ctx.results.get("quantize", {})
    names = models(ctx)
    built = []
    for model, precision in all_variants(ctx):
        if precision == "fp16" and "fp16" not in target.precisions:
            continue  # the CPU fallback of a TensorRT build: ONNX Runtime has no fast FP16 kernels to build it for
        name = variant_name(model, precision)
        int8 = precision in ("int8", "mixed")
        mixed = (quant.get(model) or {}).get("mixed") if precision == "mixed" else None
        qdq = ctx.path(mixed["path"] if mixed else qdq_name(model, ctx.plan.target.int8_form))
        cache = ctx.path("calibration.cache")
        float_nodes = mixed["float_nodes"] if mixed else [f["node"] for f in quant.get("float_nodes", {}).get(model, [])]
        request = BuildRequest(
            onnx_path=float_onnx(ctx, model), precision="int8" if int8 else precision, out_dir=ctx.path(f"artifacts/{target.name}/{name}"), target=target,
            ranges=ActivationRanges.load(ctx.path(scales_name(model))) if int8 else None,
            qdq_graph=qdq if int8 and qdq.is_file() else None,
            calibration_cache=cache if int8 and model == names[-1] and cache.is_file() else None,
            float_nodes=tuple(float_nodes),
            ui=ctx.ui,
        )
        artifact = backend.build(request)
        built.append({"name": name, "model": model, "precision": precision, "backend": backend.name, "target": target.name, "artifact": str(Path(artifact.path).relative_to(ctx.plan.out_dir))})
    return built


def run(ctx: BuildContext) -> StageResult:
    target = ctx.plan.target
    backend = get(target.backend)
    ok, reason = backend.available()
    result: dict[str, Any] = {"backend": target.backend, "available": ok, "reason": reason}
    stop = None
    if ok:
        result["variants"] = build_variants(ctx, backend, target)
    else:
        if target.backend == "onnxruntime":
            raise BackendUnavailableError(f"ONNX Runtime is not usable here: {reason}")
        stop = fallback_message(ctx.plan.out_dir, target, reason, precision=ctx.plan.precision)
        result["fallback_message"] = stop
        result["variants"] = []
        if ctx.settings.output.fallback == "cpu":
            result["variants"] = build_variants(ctx, get("onnxruntime"), get_target("cpu"))
            result["fallback_target"] = "cpu"
    outputs = [ctx.path("artifacts")] if result["variants"] else []
    built = ", ".join(v["name"] for v in result["variants"]) or "no artifacts"
    result["_summary"] = f"{target.backend}: {built}"
    return StageResult(result, outputs, stop=stop)


STAGE = Stage("backend build", run, inputs, ("export", "quantize", "calibrate"))
