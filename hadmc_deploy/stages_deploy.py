"""The deployment half of the build: export -> calibrate -> quantize -> backend build -> evaluate.

Variants: the original and the pruned model, each in FP32 and in the build's
precision (INT8 by default): baseline FP32, pruned FP32, baseline INT8, pruned +
INT8 (the full pipeline). Every variant is exported, verified, built by the
target's backend and measured here, so the report compares like with like.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.pipeline import BuildContext, Stage, StageResult, require
from hadmc_deploy.stages_compress import (
    dataset,
    final_torch_model,
    graph,
    latency_model,
    loaded_model,
    with_precision,
)

VERIFY_SAMPLES = 16
#: eval samples the mixed-precision search measures each candidate on.
MIXED_PRECISION_SAMPLES = 2000


def pruned(ctx: BuildContext) -> bool:
    return bool(ctx.results.get("recover", {}).get("final"))


def models(ctx: BuildContext) -> list[str]:
    """"baseline" always; "pruned" when the search narrowed something."""
    return ["baseline", "pruned"] if pruned(ctx) else ["baseline"]


def precisions(ctx: BuildContext) -> list[str]:
    return ["fp32"] if ctx.plan.precision == "fp32" else ["fp32", ctx.plan.precision]


def float_onnx(ctx: BuildContext, model: str) -> Path:
    return ctx.path("baseline.onnx" if model == "baseline" or not pruned(ctx) else "model.onnx")


def qdq_name(model: str, form: str) -> str:
    return f"{'baseline_' if model == 'baseline' else ''}{form}.onnx"


def scales_name(model: str) -> str:
    return "baseline_scales.json" if model == "baseline" else "scales.json"


# -- export --------------------------------------------------------------------------------
def _export(ctx: BuildContext) -> StageResult:
    export_onnx = require("export", "hadmc_deploy.export", "export_onnx")
    sample = dataset(ctx, "eval") or dataset(ctx, "calib")
    verify = sample.x[:VERIFY_SAMPLES] if sample is not None else None
    jobs = [("baseline", loaded_model(ctx).model, ctx.path("baseline.onnx"))]
    if pruned(ctx):
        jobs.append(("pruned", final_torch_model(ctx), ctx.path("model.onnx")))
    result: dict[str, Any] = {}
    for name, model, path in jobs:
        res = export_onnx(model, ctx.plan.input_shape, path, opset=ctx.plan.target.opset, dynamic_batch=True, verify_inputs=verify, ui=ctx.ui)
        result[name] = res.to_dict()
    if not pruned(ctx):
        # The final float model is the original: model.onnx names it for the backends' tools.
        from hadmc_deploy.fileio import write_bytes_atomic

        write_bytes_atomic(ctx.path("model.onnx"), ctx.path("baseline.onnx").read_bytes())
    worst = max(r["max_abs_err"] for r in result.values())
    result["_summary"] = f"{len(jobs)} model(s) exported, verified in ONNX Runtime (max abs err {worst:.2e}, {'real' if verify is not None else 'random'} inputs)"
    return StageResult(result, [p for _, _, p in jobs] + [ctx.path("model.onnx")])


# -- calibrate -----------------------------------------------------------------------------
def _calib_inputs(ctx: BuildContext) -> dict[str, Any]:
    from hadmc_deploy.stages_compress import data_hash

    int8 = ctx.plan.precision == "int8"
    return {"precision": ctx.plan.precision, "calib": data_hash(ctx, "calib") if int8 else None, "method": ctx.opt("calib_method"), "samples": ctx.opt("calib_samples")}


def _calibrate(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: no INT8 calibration")
    collect_ranges = require("calibrate", "hadmc_deploy.calibration.collect", "collect_ranges")
    write_cache = require("calibrate", "hadmc_deploy.calibration.trt_cache", "write_cache")
    data = dataset(ctx, "calib")
    outputs, result = [], {}
    for model in models(ctx):
        ranges = collect_ranges(float_onnx(ctx, model), data, method=ctx.opt("calib_method"), num_samples=ctx.opt("calib_samples"), ui=ctx.ui)
        outputs.append(ranges.save(ctx.path(scales_name(model))))
        result[model] = {"tensors": len(ranges), "method": ranges.method, "num_samples": ranges.num_samples}
        if model == models(ctx)[-1]:
            outputs.append(write_cache(ctx.path("calibration.cache"), ranges))
    result["_summary"] = f"{ctx.opt('calib_method')} ranges on {result[models(ctx)[-1]]['num_samples']} samples of {ctx.plan.calib_source}"
    return StageResult(result, outputs)


# -- quantize ------------------------------------------------------------------------------
def _quantize_inputs(ctx: BuildContext) -> dict[str, Any]:
    from hadmc_deploy.stages_compress import data_hash

    guard = ctx.opt("max_accuracy_drop")
    return {"form": ctx.plan.target.int8_form, "max_accuracy_drop": guard, "eval": data_hash(ctx, "eval") if guard is not None else None}


def _quantize(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: nothing to quantize")
    write_qdq = require("quantize", "hadmc_deploy.calibration.qdq", "write_qdq")
    from hadmc_deploy.calibration.ranges import ActivationRanges

    form = ctx.plan.target.int8_form
    outputs, result = [], {"form": form, "float_nodes": {}}
    for model in models(ctx):
        ranges = ActivationRanges.load(ctx.path(scales_name(model)))
        float_nodes, why = _float_nodes(ctx, model, ranges, form)
        out = write_qdq(float_onnx(ctx, model), ranges, ctx.path(qdq_name(model, form)), form=form, float_nodes=float_nodes)
        outputs.append(Path(out))
        result["float_nodes"][model] = [{"node": n, "reason": why.get(n, "")} for n in float_nodes]
        mixed = ctx._memo.get(f"mixed:{model}")
        result[model] = {"path": qdq_name(model, form), "mixed_precision": {k: v for k, v in mixed.items() if k != "sensitivities"} if mixed else None}
    result["_summary"] = f"{form} QDQ graphs for {', '.join(models(ctx))}"
    return StageResult(result, outputs)


def _float_nodes(ctx: BuildContext, model: str, ranges: Any, form: str) -> tuple[list[str], dict[str, str]]:
    """Layers left in float: chosen by measured sensitivity when --max-accuracy-drop is set."""
    evald = dataset(ctx, "eval")
    if ctx.opt("max_accuracy_drop") is None or evald is None:
        return [], {}
    select = require("quantize", "hadmc_deploy.calibration.sensitivity", "select_float_layers")
    # A fixed subset keeps the search affordable; the final accuracy is measured on all of --eval.
    subset = evald.subset(MIXED_PRECISION_SAMPLES, seed=ctx.opt("seed"))
    choice = select(float_onnx(ctx, model), ranges, subset, max_accuracy_drop=ctx.opt("max_accuracy_drop"), form=form, ui=ctx.ui)
    ctx.memo(f"mixed:{model}", lambda: choice.to_dict())
    return list(choice.float_nodes), dict(choice.reasons)


# -- backend build ---------------------------------------------------------------------------
def _backend_inputs(ctx: BuildContext) -> dict[str, Any]:
    from hadmc_deploy.backends import get

    ok, reason = get(ctx.plan.target.backend).available()
    return {"backend": ctx.plan.target.backend, "available": ok, "why": reason, "batch": list(ctx.plan.batch_sizes), "fallback": ctx.opt("fallback"), "triton_repo": ctx.opt("triton_repo")}


def _variant_name(model: str, precision: str) -> str:
    return f"{model}-{precision}"


def _build_variants(ctx: BuildContext, backend: Any, target: Any) -> list[dict[str, Any]]:
    """Build every variant with `backend` for `target` (the plan's target, or the CPU fallback).

    One typed request per variant; each backend picks its own INT8 input from what the
    request offers (QDQ graph in the plan target's form, ranges, TensorRT calibration cache).
    """
    from hadmc_deploy.backends import BuildRequest
    from hadmc_deploy.calibration.ranges import ActivationRanges

    quant = ctx.results.get("quantize", {})
    built = []
    for model in models(ctx):
        for precision in precisions(ctx):
            name = _variant_name(model, precision)
            int8 = precision == "int8"
            qdq = ctx.path(qdq_name(model, ctx.plan.target.int8_form))
            cache = ctx.path("calibration.cache")
            request = BuildRequest(
                onnx_path=float_onnx(ctx, model), precision=precision, out_dir=ctx.path(f"artifacts/{target.name}/{name}"), target=target,
                ranges=ActivationRanges.load(ctx.path(scales_name(model))) if int8 else None,
                qdq_graph=qdq if int8 and qdq.is_file() else None,
                calibration_cache=cache if int8 and model == models(ctx)[-1] and cache.is_file() else None,
                float_nodes=tuple(f["node"] for f in quant.get("float_nodes", {}).get(model, [])),
                ui=ctx.ui,
            )
            artifact = backend.build(request)
            built.append({"name": name, "model": model, "precision": precision, "backend": backend.name, "target": target.name, "artifact": str(Path(artifact.path).relative_to(ctx.plan.out_dir))})
    return built


def _backend_build(ctx: BuildContext) -> StageResult:
    from hadmc_deploy.backends import get

    target = ctx.plan.target
    backend = get(target.backend)
    ok, reason = backend.available()
    result: dict[str, Any] = {"backend": target.backend, "available": ok, "reason": reason}
    stop = None
    if ok:
        result["variants"] = _build_variants(ctx, backend, target)
    else:
        if target.backend == "onnxruntime":
            from hadmc_deploy.errors import BackendUnavailableError

            raise BackendUnavailableError(f"ONNX Runtime is not usable here: {reason}")
        message = require("backend build", "hadmc_deploy.backends.tensorrt_artifact", "fallback_message")
        stop = message(ctx.plan.out_dir, target, reason, precision=ctx.plan.precision)
        result["fallback_message"] = stop
        result["variants"] = []
        if ctx.opt("fallback") == "cpu":
            from hadmc_deploy.targets import get_target

            result["variants"] = _build_variants(ctx, get("onnxruntime"), get_target("cpu"))
            result["fallback_target"] = "cpu"
    if ctx.opt("triton_repo"):
        result["triton"] = _triton(ctx, result["variants"])
    outputs = [ctx.path("artifacts")] if result["variants"] else []
    built = ", ".join(v["name"] for v in result["variants"]) or "no artifacts"
    result["_summary"] = f"{target.backend}: {built}"
    return StageResult(result, outputs, stop=stop)


def _triton(ctx: BuildContext, variants: list[dict[str, Any]]) -> dict[str, Any]:
    write_triton_repo = require("backend build", "hadmc_deploy.triton", "write_triton_repo")
    if not variants:
        return {"written": False, "reason": "no artifact was built here to put in the repository"}
    from hadmc_deploy.backends import Artifact

    final = variants[-1]
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in Path(str(ctx.plan.model or "model")).stem)
    path = write_triton_repo(ctx.opt("triton_repo"), Artifact.load(ctx.path(final["artifact"])), name, max_batch_size=max(ctx.plan.batch_sizes))
    return {"written": True, "path": str(path), "variant": final["name"]}


# -- evaluate ------------------------------------------------------------------------------
def _eval_inputs(ctx: BuildContext) -> dict[str, Any]:
    from hadmc_deploy.stages_compress import data_hash

    return {"eval": data_hash(ctx, "eval"), "batch": list(ctx.plan.batch_sizes), "runs": ctx.opt("runs"), "warmup": ctx.opt("warmup")}


def _predicted(ctx: BuildContext, model: str, precision: str) -> dict[str, Any]:
    """Latency-model prediction for a variant at each batch size, with what made it."""
    widths = ctx.results.get("search", {}).get("keep", {}) if model == "pruned" else {}
    lm = latency_model(ctx)
    specs = with_precision(graph(ctx).layer_specs(widths or None), precision)
    out = {}
    for batch in ctx.plan.batch_sizes:
        pred = lm.predict([replace(s, batch=batch) for s in specs])
        out[str(batch)] = {"ms": float(pred.total_ms), "source": pred.source}
    return out


def _evaluate(ctx: BuildContext) -> StageResult:
    from hadmc_deploy.backends import Artifact, get
    from hadmc_deploy.evaluate import artifact_accuracy, benchmark_artifact, file_size, onnx_accuracy

    evald = dataset(ctx, "eval")
    built = {v["name"]: v for v in ctx.results["backend build"].get("variants", [])}
    params = {"baseline": ctx.results["load"]["params"], "pruned": ctx.results.get("surgery", {}).get("params")}
    macs = {"baseline": ctx.results["load"]["macs"], "pruned": ctx.results.get("surgery", {}).get("macs")}
    form = ctx.plan.target.int8_form
    rows = []
    for model in models(ctx):
        for precision in precisions(ctx):
            name = _variant_name(model, precision)
            onnx_file = float_onnx(ctx, model) if precision != "int8" else ctx.path(qdq_name(model, form))
            row: dict[str, Any] = {"name": name, "model": model, "precision": precision, "params": params[model], "macs": macs[model], "onnx": onnx_file.name, "onnx_sha256": sha256_file(onnx_file)}
            row["predicted"] = _predicted(ctx, model, precision)
            entry = built.get(name)
            if entry is not None:
                backend = get(entry["backend"])
                artifact = Artifact.load(ctx.path(entry["artifact"]))
                row.update({"backend": entry["backend"], "target": entry["target"], "artifact": entry["artifact"], "file_bytes": file_size(artifact.model_path)})
                row["accuracy"] = artifact_accuracy(backend, artifact, evald, ui=ctx.ui) if evald is not None else None
                row["accuracy_measured_with"] = f"{entry['backend']} artifact"
                lat = benchmark_artifact(backend, artifact, ctx.plan.batch_sizes, warmup=ctx.opt("warmup"), runs=ctx.opt("runs"), ui=ctx.ui)
                row["latency"] = {str(b): s for b, s in lat.per_batch.items()}
                row["session"] = {k: artifact.metadata.get(k) for k in ("session_options", "backend_version", "device", "precision_path", "int8_form") if k in artifact.metadata}
            else:
                row.update({"backend": None, "artifact": None, "file_bytes": file_size(onnx_file), "latency": {}})
                row["accuracy"] = onnx_accuracy(onnx_file, evald, ui=ctx.ui) if evald is not None else None
                row["accuracy_measured_with"] = "onnxruntime CPU on the portable ONNX (no artifact built here)"
            rows.append(row)
    _add_speedups(rows)
    summary = "; ".join(f"{r['name']} {r['accuracy']:.2f}%" for r in rows if r.get("accuracy") is not None) or f"{len(rows)} variants"
    return StageResult({"variants": rows, "eval_source": ctx.plan.options["eval"], "eval_samples": len(evald) if evald is not None else 0, "_summary": summary})


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["name"] == "baseline-fp32"), None)
    for row in rows:
        row["speedup"] = {}
        if base is None:
            continue
        for batch, stats in row["latency"].items():
            ref = base["latency"].get(batch)
            if ref and stats.get("p50_ms"):
                row["speedup"][batch] = ref["p50_ms"] / stats["p50_ms"]


DEPLOY_STAGES = [
    Stage("export", _export, lambda c: {"opset": c.plan.target.opset, "input_shape": list(c.plan.input_shape)}, ("load", "recover"), ("hadmc_deploy.export", "hadmc_deploy.onnx_passes", "hadmc_deploy.stages_deploy")),
    Stage("calibrate", _calibrate, _calib_inputs, ("export",), ("hadmc_deploy.calibration.collect", "hadmc_deploy.calibration.observers", "hadmc_deploy.calibration.ranges")),
    Stage("quantize", _quantize, _quantize_inputs, ("calibrate", "export"), ("hadmc_deploy.calibration.qdq",)),
    Stage("backend build", _backend_build, _backend_inputs, ("export", "quantize", "calibrate"), ("hadmc_deploy.backends.onnxruntime", "hadmc_deploy.backends.tensorrt", "hadmc_deploy.backends.base")),
    Stage("evaluate", _evaluate, _eval_inputs, ("backend build", "recover", "surgery", "search"), ("hadmc_deploy.evaluate",)),
]
