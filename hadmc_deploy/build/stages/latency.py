"""Stage 3, latency model: a table given (--lut), from the target profile, or measured here
(--measure-lut) through the target's backend; the analytic roofline, labelled, otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.backends import get as get_backend
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import graph, latency_model, loaded_model, with_precision
from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.latency.measure import backend_timer, measure_specs, open_table, specs_for_graph
from hadmc_deploy.latency.whole_model import fit_table_correction

SOURCE_LABELS = {
    "lut": "measured LUT",
    "analytic": "analytic roofline (no LUT: datasheet numbers, not measured)",
    "lut+analytic": "measured LUT, analytic for specs outside it",
}


def inputs(ctx: BuildContext) -> dict[str, Any]:
    lat = ctx.settings.latency
    lut = lat.lut or ctx.plan.target.lut_path
    return {
        "target": ctx.plan.target.to_dict(),
        "lut": lut,
        "lut_sha256": sha256_file(lut) if lut and Path(lut).is_file() else None,
        "measure_lut": lat.measure_lut,
        "lut_minutes": lat.lut_minutes if lat.measure_lut else None,
        "precision": ctx.plan.precision,
    }


def run(ctx: BuildContext) -> StageResult:
    lat = ctx.settings.latency
    outputs: list[Path] = []
    lut = lat.lut or ctx.plan.target.lut_path
    how = "given with --lut" if lat.lut else ("from the target profile" if lut else "")
    measured = None
    if lat.measure_lut:
        # One file per (precision, batch): a table only holds one, and each is reused by later builds.
        lut_out = ctx.path(f"lut-{ctx.plan.precision}-b{ctx.plan.input_shape[0]}.json")
        measured = _measure_lut(ctx, lut_out)
        lut, how = str(lut_out), f"measured here with --measure-lut on {ctx.plan.target.backend} ({measured['measured']} new, {measured['cached']} reused points)"
        outputs.append(lut_out)
    ctx.results["latency model"] = {"lut_path": lut}
    lm = latency_model(ctx)
    specs = with_precision(graph(ctx).layer_specs(), ctx.plan.precision)
    pred = lm.predict(specs)
    label = SOURCE_LABELS.get(pred.source, pred.source)
    result = {
        "source": pred.source,
        "label": label,
        "lut_path": lut,
        "lut_how": how or "none: the analytic model from the target's datasheet",
        "baseline_predicted_ms": float(pred.total_ms),
        "precision": ctx.plan.precision,
        "measured": measured,
        "_summary": f"{label}; baseline predicted {pred.total_ms:.3f} ms at batch {ctx.plan.input_shape[0]}",
    }
    if pred.source != "lut" and (ctx.settings.search.latency_budget or ctx.settings.latency.lut):
        ctx.ui.warn(f"latency model: {label}" + ("; pass --lut or --measure-lut for measured numbers" if pred.source == "analytic" else ""))
    return StageResult(result, outputs)


def _measure_lut(ctx: BuildContext, lut_out: Path) -> dict[str, Any]:
    """Time this model's layers over a width grid through the target's backend (resumable)."""
    target = ctx.plan.target
    backend = get_backend(target.backend)
    ok, reason = backend.available()
    if not ok:
        raise LatencyModelError(f"--measure-lut needs the {target.backend} backend on this machine: {reason}", hint=f"measure on the {target.name} host with `hadmc-deploy lut`, then pass --lut")
    batch, precision = ctx.plan.input_shape[0], ctx.plan.precision
    warmup, runs = 5, 20
    table = open_table(lut_out, target, backend, precision=precision, batch=batch, warmup=warmup, runs=runs, ui=ctx.ui)
    specs = specs_for_graph(graph(ctx), ctx.plan.round_to, precision=precision, batch=batch)
    report = measure_specs(specs, table, lut_out, backend_timer(backend, warmup, runs), budget_minutes=ctx.settings.latency.lut_minutes, ui=ctx.ui)
    out = report.to_dict()
    if not report.stopped_by_budget and not report.failed and (table.correction is None or report.measured):
        # Without the whole-model correction a layer sum misprices the fused graph (for INT8
        # badly: a 2.00x prediction measured 1.06x on the demo), so fit it on every complete table.
        out["correction"] = fit_table_correction(loaded_model(ctx).model, graph(ctx), ctx.plan.input_shape, table, lut_out, backend, ctx.plan.round_to, ctx.ui)
    ctx.forget("latency")
    return out


STAGE = Stage("latency model", run, inputs, ("trace",), dry_run=True)
