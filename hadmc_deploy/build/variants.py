"""The variants one build produces and where their files live.

A variant is a model (the original "baseline", or the "pruned" one when the search
narrowed something) at a precision (FP32, and the build's precision when that is not
FP32), plus derived variants such as "pruned-mixed" (INT8 with the layers where INT8
does not pay kept in float). Every variant is exported, built and measured, so the
decision compares like with like.
"""

from __future__ import annotations

from pathlib import Path

from hadmc_deploy.build.engine import BuildContext


def pruned(ctx: BuildContext) -> bool:
    return bool(ctx.results.get("recover", {}).get("final"))


def models(ctx: BuildContext) -> list[str]:
    """"baseline" always; "pruned" when the search narrowed something."""
    return ["baseline", "pruned"] if pruned(ctx) else ["baseline"]


def precisions(ctx: BuildContext) -> list[str]:
    """FP32, FP16 where the target's backend has fast FP16 kernels (INT8 must beat FP16 there,
    not just FP32), and the build's precision."""
    target = ctx.plan.target
    out = ["fp32"]
    if target.backend == "tensorrt" and "fp16" in target.precisions:
        out.append("fp16")
    if ctx.plan.precision not in out:
        out.append(ctx.plan.precision)
    return out


def float_onnx(ctx: BuildContext, model: str) -> Path:
    return ctx.path("baseline.onnx" if model == "baseline" or not pruned(ctx) else "model.onnx")


def qdq_name(model: str, form: str) -> str:
    return f"{'baseline_' if model == 'baseline' else ''}{form}.onnx"


def scales_name(model: str) -> str:
    return "baseline_scales.json" if model == "baseline" else "scales.json"


def variant_name(model: str, precision: str) -> str:
    return f"{model}-{precision}"


def mixed_name(model: str, form: str) -> str:
    return f"{'baseline_' if model == 'baseline' else ''}{form}_mixed.onnx"


def mixed_models(ctx: BuildContext) -> list[str]:
    """Models for which the quantize stage wrote a mixed graph (INT8 where it was measured to pay)."""
    quant = ctx.results.get("quantize", {})
    return [m for m in models(ctx) if (quant.get(m) or {}).get("mixed")]


def all_variants(ctx: BuildContext) -> list[tuple[str, str]]:
    """(model, precision) of every variant, "mixed" after the model's INT8 one."""
    out = []
    mixed = mixed_models(ctx)
    for model in models(ctx):
        out += [(model, p) for p in precisions(ctx)]
        if model in mixed:
            out.append((model, "mixed"))
    return out
