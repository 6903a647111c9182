"""Stage 10, backend build: every variant as an artifact of the target's backend, or, where
that backend is missing here (TensorRT without a GPU), the portable artifacts and the command
that finishes the build on the target host (plus CPU artifacts with --fallback cpu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.backends import Artifact, Backend, get
from hadmc_deploy.backends.tensorrt_artifact import fallback_message
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.variants import float_onnx, models, precisions, qdq_name, scales_name, variant_name
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.errors import BackendUnavailableError
from hadmc_deploy.targets import TargetProfile, get_target
from hadmc_deploy.triton import write_triton_repo


def inputs(ctx: BuildContext) -> dict[str, Any]:
    ok, reason = get(ctx.plan.target.backend).available()
    out = ctx.settings.output
    return {"backend": ctx.plan.target.backend, "available": ok, "why": reason, "batch": list(ctx.plan.batch_sizes), "fallback": out.fallback, "triton_repo": out.triton_repo}


def build_variants(ctx: BuildContext, backend: Backend, target: TargetProfile) -> list[dict[str, Any]]:
    """Build every variant with `backend` for `target` (the plan's target, or the CPU fallback)."""
    quant = ctx.results.get("quantize", {})
    built = []
    for model in models(ctx):
        for precision in precisions(ctx):
            name = variant_name(model, precision)
            out_dir = ctx.path(f"artifacts/{target.name}/{name}")
            source, ranges = float_onnx(ctx, model), None
            float_nodes = [f["node"] for f in quant.get("float_nodes", {}).get(model, [])]
            if backend.name == "tensorrt":
                options: dict[str, Any] = {"target": target, "ui": ctx.ui}
                if precision == "int8":
                    options.update(qdq_onnx=str(ctx.path(qdq_name(model, target.int8_form))), calib_cache=str(ctx.path("calibration.cache")))
            else:
                options = {"target": target.name, "int8_form": target.int8_form, "float_nodes": float_nodes}
            if precision == "int8":
                qdq = ctx.path(qdq_name(model, target.int8_form))
                if qdq.is_file() and ctx.plan.target.backend == backend.name == "onnxruntime":
                    source = qdq  # the quantize stage's graph, already in this backend's form and placement
                else:
                    ranges = ActivationRanges.load(ctx.path(scales_name(model)))
            artifact = backend.build(source, precision, out_dir, ranges=ranges, options=options)
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
    if ctx.settings.output.triton_repo:
        result["triton"] = _triton(ctx, result["variants"])
    outputs = [ctx.path("artifacts")] if result["variants"] else []
    built = ", ".join(v["name"] for v in result["variants"]) or "no artifacts"
    result["_summary"] = f"{target.backend}: {built}"
    return StageResult(result, outputs, stop=stop)


def _triton(ctx: BuildContext, variants: list[dict[str, Any]]) -> dict[str, Any]:
    if not variants:
        return {"written": False, "reason": "no artifact was built here to put in the repository"}
    final = variants[-1]
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in Path(str(ctx.plan.model or "model")).stem)
    path = write_triton_repo(ctx.settings.output.triton_repo, Artifact.load(ctx.path(final["artifact"])), name, max_batch_size=max(ctx.plan.batch_sizes))
    return {"written": True, "path": str(path), "variant": final["name"]}


STAGE = Stage("backend build", run, inputs, ("export", "quantize", "calibrate"))
