"""Stage 9, quantize: the QDQ graph of every model in the target's INT8 form, with the layers
that the accuracy guard's sensitivity search keeps in float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import data_hash, dataset
from hadmc_deploy.build.variants import float_onnx, mixed_name, models, qdq_name, scales_name
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.calibration.sensitivity import select_float_layers
from hadmc_deploy.latency.ort_profile import int8_slow_layers

#: eval samples the mixed-precision search measures each candidate on.
MIXED_PRECISION_SAMPLES = 2000


def inputs(ctx: BuildContext) -> dict[str, Any]:
    guard = ctx.settings.quantization.max_accuracy_drop
    return {"form": ctx.plan.target.int8_form, "max_accuracy_drop": guard, "eval": data_hash(ctx, "eval") if guard is not None else None,
            "batch": ctx.plan.input_shape[0]}


def run(ctx: BuildContext) -> StageResult:
    if ctx.plan.precision != "int8":
        return StageResult({}, skipped=f"precision {ctx.plan.precision}: nothing to quantize")
    form = ctx.plan.target.int8_form
    outputs: list[Path] = []
    result: dict[str, Any] = {"form": form, "float_nodes": {}}
    for model in models(ctx):
        ranges = ActivationRanges.load(ctx.path(scales_name(model)))
        float_nodes, why, mixed = _float_nodes(ctx, model, ranges, form)
        out = write_qdq(float_onnx(ctx, model), ranges, ctx.path(qdq_name(model, form)), form=form, float_nodes=float_nodes)
        outputs.append(Path(out))
        result["float_nodes"][model] = [{"node": n, "reason": why.get(n, "")} for n in float_nodes]
        result[model] = {"path": qdq_name(model, form), "mixed_precision": mixed, "mixed": _speed_mixed(ctx, model, ranges, form, float_nodes, outputs)}
    result["_summary"] = f"{form} QDQ graphs for {', '.join(models(ctx))}"
    return StageResult(result, outputs)


def _speed_mixed(ctx: BuildContext, model: str, ranges: ActivationRanges, form: str, float_nodes: list[str], outputs: list[Path]) -> dict[str, Any] | None:
    """A second QDQ graph with the layers that run slower in INT8 than in FP32 (ONNX Runtime's
    profiler on the real graphs, Q/DQ overhead included) kept in float; measured as a variant."""
    if ctx.plan.target.backend != "onnxruntime":
        return None  # TensorRT chooses per layer itself (FP16 or INT8) when it builds the engine
    source, qdq = float_onnx(ctx, model), ctx.path(qdq_name(model, form))
    slow, timings = int8_slow_layers(source, qdq, batch=ctx.plan.input_shape[0])
    weighted = {t.node for t in timings}
    keep_float = sorted(set(slow) - set(float_nodes))
    if not keep_float or weighted <= set(slow) | set(float_nodes):
        return None  # INT8 pays everywhere, or nowhere (then the FP32 variant is the mixed one)
    out = write_qdq(source, ranges, ctx.path(mixed_name(model, form)), form=form, float_nodes=[*float_nodes, *keep_float])
    outputs.append(Path(out))
    ctx.ui.log(f"{model}: {len(keep_float)} of {len(weighted)} layers run slower in INT8 here; a mixed graph keeps them in float")
    return {
        "path": mixed_name(model, form),
        "float_nodes": [*float_nodes, *keep_float],
        "slow_in_int8": [{"node": t.node, "fp32_ms": t.fp32_ms, "int8_ms": t.int8_ms} for t in timings if t.node in keep_float],
    }


def _float_nodes(ctx: BuildContext, model: str, ranges: ActivationRanges, form: str) -> tuple[list[str], dict[str, str], dict[str, Any] | None]:
    """Layers left in float: chosen by measured sensitivity when an accuracy guard is set."""
    evald = dataset(ctx, "eval")
    guard = ctx.settings.quantization.max_accuracy_drop
    if guard is None or evald is None:
        return [], {}, None
    # A fixed subset keeps the search affordable; the final accuracy is measured on all of --eval.
    subset = evald.subset(MIXED_PRECISION_SAMPLES, seed=ctx.settings.data.seed)
    choice = select_float_layers(float_onnx(ctx, model), ranges, subset, max_accuracy_drop=guard, form=form, ui=ctx.ui)
    summary = {k: v for k, v in choice.to_dict().items() if k != "sensitivities"}
    return list(choice.float_nodes), dict(choice.reasons), summary


STAGE = Stage("quantize", run, inputs, ("calibrate", "export"))
