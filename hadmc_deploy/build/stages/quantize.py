"""Stage 9, quantize: per model, the QDQ graph in the target's INT8 form through the one INT8
call (`calibration.quantize.quantize_int8`): checked against FP32 on held-out calibration
samples, guarded on --eval accuracy and repaired (range method per tensor, then the most
sensitive layers in float) before it is refused; then, on ONNX Runtime, a mixed graph that
keeps in float the layers measured slower in INT8."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import data_hash, dataset, int8_guarding, macs_per_image, task
from hadmc_deploy.build.int8_heldout import GUARD_SAMPLES, heldout_images, heldout_reference, int8_options
from hadmc_deploy.build.metric import DETECT
from hadmc_deploy.build.sample_budget import verify_samples
from hadmc_deploy.build.stages.decide import pruned_exclusion
from hadmc_deploy.build.variants import float_onnx, mixed_name, models, qdq_name, scales_name
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.calibration.quantize import Int8Options, quantize_int8
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.latency.ort_profile import int8_slow_layers


def inputs(ctx: BuildContext) -> dict[str, Any]:
    q = ctx.settings.quantization
    return {"form": ctx.plan.target.int8_form, "guard": q.max_accuracy_drop, "allow": q.allow_accuracy_drop, "method": q.calib_method,
            "eval": data_hash(ctx, "eval") if q.max_accuracy_drop is not None else None, "batch": ctx.plan.input_shape[0]}


def run(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: nothing to quantize")
    form = ctx.plan.target.int8_form
    calib = dataset(ctx, "calib")
    evald = dataset(ctx, "eval") if task(ctx) != DETECT else None
    if evald is not None:
        evald = evald.subset(GUARD_SAMPLES, seed=ctx.settings.data.seed)
    opts = int8_options(ctx)
    outputs: list[Path] = []
    result: dict[str, Any] = {"form": form, "float_nodes": {}}
    for model in models(ctx):
        prefix = "baseline_" if model == "baseline" else ""
        model_opts = opts
        excluded = pruned_exclusion(ctx.results.get("recover", {})) if model == "pruned" and int8_guarding(ctx) else ""
        if excluded:
            # the pruned model may not deploy in any precision: its INT8 graph is built and timed for
            # the report, checked plainly on the usual sample count, not guarded on hundreds more
            # (a random-weight ResNet-18's unlabelled build spent 15-20 s of its 41 s quantize stage there)
            model_opts = replace(opts, guard=None, verify_samples=verify_samples(macs_per_image(ctx)))
            ctx.ui.log("pruned: its INT8 graph is checked plainly, not guarded: the pruned model itself may not deploy (report.md, Recovery)")
        r, earlier_build = _quantized(ctx, model, calib, model_opts, evald, prefix)
        outputs += [Path(r["qdq_path"]), Path(r["scales_path"])] + ([Path(r["trt_cache_path"])] if r["trt_cache_path"] else [])
        result["float_nodes"][model] = [{"node": n, "reason": r["float_node_reasons"].get(n, "")} for n in r["float_nodes"]]
        ranges = ActivationRanges.load(ctx.path(scales_name(model)))
        result[model] = {
            "path": qdq_name(model, form), "deployable": r["deployable"],
            "reason": f"not guarded, as the pruned model itself may not deploy; {r['reason']}" if excluded else r["reason"], "method": r["method"], "method_counts": r["method_counts"],
            "check": r["check"], "guard": r["guard"], "from_earlier_build": earlier_build,
            "mixed": _speed_mixed(ctx, model, ranges, list(r["float_nodes"]), model_opts, outputs) if r["deployable"] else None,
        }
    earlier = [m for m in models(ctx) if result[m]["from_earlier_build"]]
    result["_summary"] = f"{form} QDQ graphs for {', '.join(models(ctx))}" + (f" ({', '.join(earlier)}: from an earlier build)" if earlier else "") + "".join(
        f"; {m}: {result[m]['reason']}" for m in models(ctx) if not result[m]["deployable"])
    return StageResult(result, outputs)


def _quantized(ctx: BuildContext, model: str, calib: Any, opts: Int8Options, evald: Any, prefix: str) -> tuple[dict[str, Any], bool]:
    """`quantize_int8`'s result as JSON (its files written to the build directory), and whether an
    earlier build of the same graph, ranges, images and options had it (`build/reuse.py`): the
    guard's passes over the held-out and --eval images are most of the stage."""
    source, scales = float_onnx(ctx, model), ctx.path(scales_name(model))
    files = ("qdq_path", "scales_path", "trt_cache_path")  # the result's paths: stored by name, restored into this build

    def run() -> dict[str, Any]:
        reference = heldout_reference(ctx, model, opts) if int8_guarding(ctx) and opts.guard is not None else None
        r = quantize_int8(source, calib, ctx.plan.out_dir, opts, eval_data=evald, prefix=prefix, heldout_reference=reference, ui=ctx.ui)
        return json.loads(json.dumps(asdict(r), default=str))

    if not ctx.cache.enabled:
        return run(), False
    key = reuse.file_key("quantized", source, ranges=sha256_file(scales), options=asdict(opts), prefix=prefix,
                         heldout=heldout_images(ctx, opts)[1],
                         # the --eval subset by what draws it (hashing 2,000 images at 224 took a second)
                         eval=[data_hash(ctx, "eval"), ctx.settings.data.seed, len(evald)] if evald is not None else None)
    stored = reuse.stored_files("quantized", key)
    if stored is not None:
        copies, r = stored
        for name, path in copies.items():
            shutil.copyfile(path, ctx.path(name))
        ctx.ui.log(f"{model}: its QDQ graph and INT8 check from an earlier build of the same graph ({next(iter(copies.values())).parent})")
        return {**r, **{k: str(ctx.path(r[k])) for k in files if r.get(k)}}, True
    r = run()
    reuse.store_files("quantized", key, [Path(r[k]) for k in files if r.get(k)], {**r, **{k: Path(r[k]).name for k in files if r.get(k)}})
    return r, False


def _speed_mixed(ctx: BuildContext, model: str, ranges: ActivationRanges, float_nodes: list[str], opts: Int8Options, outputs: list[Path]) -> dict[str, Any] | None:
    """A second QDQ graph with the layers that run slower in INT8 than in FP32 (ONNX Runtime's
    profiler on the real graphs, Q/DQ overhead included) kept in float; measured as a variant."""
    if ctx.plan.target.backend != "onnxruntime":
        return None  # TensorRT chooses per layer itself (FP16 or INT8) when it builds the engine
    form = opts.form
    source, qdq = float_onnx(ctx, model), ctx.path(qdq_name(model, form))
    try:
        slow, timings = int8_slow_layers(source, qdq, batch=ctx.plan.input_shape[0])
    except LatencyModelError as exc:  # the profiles cannot be read per layer: the all-INT8 and FP32 variants remain
        ctx.ui.warn(f"{model}: no mixed INT8/FP32 graph ({exc.one_line()})")
        return None
    weighted = {t.node for t in timings}
    keep_float = sorted(set(slow) - set(float_nodes))
    if not keep_float or weighted <= set(slow) | set(float_nodes):
        return None  # INT8 pays everywhere, or nowhere (then the FP32 variant is the mixed one)
    out = write_qdq(source, ranges, ctx.path(mixed_name(model, form)), form=form, float_nodes=[*float_nodes, *keep_float], reduce_range=opts.reduce_range)
    outputs.append(Path(out))
    ctx.ui.log(f"{model}: {len(keep_float)} of {len(weighted)} layers run slower in INT8 here; a mixed graph keeps them in float")
    return {
        "path": mixed_name(model, form),
        "float_nodes": [*float_nodes, *keep_float],
        "slow_in_int8": [{"node": t.node, "fp32_ms": t.fp32_ms, "int8_ms": t.int8_ms} for t in timings if t.node in keep_float],
        # against FP32, where it is the guard (no labels): run by the decide stage, and only when
        # this graph could deploy (a ResNet-18 at 224 spent 5 s of its build checking a mixed graph
        # that then measured slower than the all-INT8 one)
        "check": None,
        "check_pending": bool(int8_guarding(ctx) and opts.guard is not None),
    }


STAGE = Stage("quantize", run, inputs, ("calibrate", "export", "recover"))
