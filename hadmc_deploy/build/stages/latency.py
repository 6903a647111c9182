"""Stage 3, latency model: a table given (--lut) or from the target profile; otherwise, when the
build runs on its target (ONNX Runtime on this CPU), a table measured here for this model,
cached across builds by graph, machine, backend version, precision and batch; the analytic
roofline, labelled, only for targets that are not this machine (or with --no-measure-lut)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hadmc_deploy.backends import get as get_backend
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import baseline_export, graph, latency_model, loaded_model, with_precision
from hadmc_deploy.errors import HadmcError, LatencyModelError
from hadmc_deploy.fileio import sha256_file, user_cache_root
from hadmc_deploy.latency.auto import MeasureOptions
from hadmc_deploy.latency.lut import prices_sha256
from hadmc_deploy.latency.stated_spread import stated_spread
from hadmc_deploy.latency.table_cache import cached_table, measured_latency_model

SOURCE_LABELS = {
    "lut": "measured LUT",
    "analytic": "analytic roofline (no LUT: datasheet numbers, not measured)",
    "lut+analytic": "measured LUT, analytic for specs outside it",
}


def cache_dir() -> Path:
    """Where measured tables are kept between builds ($HADMC_CACHE, else the user's cache folder)."""
    return user_cache_root() / "lut"


def measures_here(ctx: BuildContext) -> bool:
    """Measure a table when a latency budget needs one and none is given, and the target's backend
    is this machine's ONNX Runtime (--measure-lut / --no-measure-lut decide explicitly)."""
    lat = ctx.settings.latency
    if lat.lut or ctx.plan.target.lut_path:
        return False
    if lat.measure_lut is not None:
        return bool(lat.measure_lut)
    return ctx.settings.search.latency_budget and ctx.plan.target.backend == "onnxruntime" and get_backend("onnxruntime").available()[0]


def reusable_table(ctx: BuildContext) -> Path | None:
    """Without a budget nothing is measured, but a complete table this machine measured earlier for
    this graph costs nothing to reuse: the report then prices every variant with it, not with the
    analytic roofline (a demo retry with --widths was priced analytically beside its cached table)."""
    lat = ctx.settings.latency
    if lat.lut or ctx.plan.target.lut_path or lat.measure_lut is False or measures_here(ctx) or ctx.plan.target.backend != "onnxruntime":
        return None
    return cached_table(graph(ctx), ctx.plan.target, ctx.plan.precision, ctx.plan.input_shape[0], cache_dir())


def inputs(ctx: BuildContext) -> dict[str, Any]:
    lat = ctx.settings.latency
    lut = lat.lut or ctx.plan.target.lut_path
    measure = measures_here(ctx)
    reuse = reusable_table(ctx)
    return {
        "reused_lut_sha256": prices_sha256(reuse) if reuse else None,
        "target": ctx.plan.target.to_dict(),
        "lut": lut,
        "lut_sha256": sha256_file(lut) if lut and Path(lut).is_file() else None,
        "measure": measure,
        "lut_minutes": lat.lut_minutes if measure else None,
        "precision": ctx.plan.precision,
        "batch": ctx.plan.input_shape[0],
    }


def run(ctx: BuildContext) -> StageResult:
    lat = ctx.settings.latency
    outputs: list[Path] = []
    lut = lat.lut or ctx.plan.target.lut_path
    how = "given with --lut" if lat.lut else ("from the target profile" if lut else "")
    measured = None
    if measures_here(ctx):
        measured, lut = _measure(ctx)
        how = (f"measured on this machine through {ctx.plan.target.backend} in {measured.get('seconds', 0):.0f} s"
               if not measured.get("cached") else "measured on this machine earlier (cached table for this graph, machine and backend)")
        again = measured.get("measured_again")
        if again:
            how += (f"; measured again as the cached table's measurements spread +-{100 * again['earlier_spread']:.1f}% (a busy machine), "
                    f"the {again['kept']} one kept (the steadier)")
        fit = measured.get("context_fit") or {}
        if fit.get("worst_error", 0.0) > fit.get("tolerance", 1.0):
            how += (f"; its context fit prices its own plan {fit['worst_plan']} {fit['worst_error']:.0%} from its whole-model time"
                    f"{' after timing it again' if fit.get('rechecked') else ''}: predictions may miss, the latency check measures")
        outputs.append(Path(lut))
    reused = None
    if measured is None and (reuse := reusable_table(ctx)) is not None:
        reused = reuse
        lut = str(ctx.path(f"lut-{ctx.plan.precision}-b{ctx.plan.input_shape[0]}.json"))
        shutil.copyfile(reuse, lut)
        how = "measured on this machine earlier (cached table for this graph, machine and backend; reused without a budget)"
        outputs.append(Path(lut))
    ctx.results["latency model"] = {"lut_path": lut}
    ctx.forget("latency")
    lm = latency_model(ctx)
    specs = with_precision(graph(ctx).layer_specs(), ctx.plan.precision)
    pred = lm.predict(specs)
    label = SOURCE_LABELS.get(pred.source, pred.source)
    table = getattr(lm, "table", None)
    spread = stated_spread(table) if table is not None else None
    if spread is not None and how:
        how += f"; whole-model predictions +-{100 * spread:.1f}% (the table's stated spread)"
    result = {
        "source": pred.source,
        "label": label,
        "lut_path": lut,
        "lut_how": how or "none: the analytic model from the target's datasheet",
        "baseline_predicted_ms": float(pred.total_ms),
        "stated_spread": spread,
        "precision": ctx.plan.precision,
        # the channel step measured on this machine (None: the target's assumed alignment applies). A table
        # reused without a budget only prices: a --ratio plan must not depend on what the cache holds.
        "measured_step": table.alignment() if table is not None and reused is None and getattr(table, "staircase", None) is not None else None,
        "measured": measured,
        # the cached table this build measured or reused: where the decide stage's self-check leaves its feedback
        "cache_file": (measured or {}).get("lut") or (str(reused) if reused is not None else None),
        "_summary": f"{label}; baseline predicted {pred.total_ms:.3f} ms at batch {ctx.plan.input_shape[0]}",
    }
    if pred.source != "lut" and (ctx.settings.search.latency_budget or lat.lut):
        ctx.ui.warn(f"latency model: {label}" + ("; pass --lut, or build on the target for a measured table" if pred.source == "analytic" else ""))
    return StageResult(result, outputs)


def _measure(ctx: BuildContext) -> tuple[dict[str, Any], str]:
    """A table for this model measured through the target's backend (or reused from the cache),
    copied into the build directory so the build stays reproducible from its own files."""
    target = ctx.plan.target
    backend = get_backend(target.backend)
    ok, reason = backend.available()
    if not ok:
        raise LatencyModelError(f"measuring a latency table needs the {target.backend} backend on this machine: {reason}", hint=f"measure on the {target.name} host with `hadmc-deploy lut`, then pass --lut")
    batch = ctx.plan.input_shape[0]
    lm, info = measured_latency_model(
        graph(ctx), loaded_model(ctx).model, ctx.plan.input_shape, target, ctx.plan.precision, batch, cache_dir(),
        budget_s=ctx.settings.latency.lut_minutes * 60, options=MeasureOptions(clock="wall"), baseline_onnx=lambda: _deployed_baseline(ctx), ui=ctx.ui,
    )
    local = ctx.path(f"lut-{ctx.plan.precision}-b{batch}.json")
    shutil.copyfile(info["lut"], local)
    info = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None), dict, list))}
    return info, str(local)


def _deployed_baseline(ctx: BuildContext) -> Path | None:
    """The original as the export stage will ship it, for the context fit's full-width plan (None when
    it does not export: the fit then exports on its own, and says why it cannot)."""
    try:
        return Path(baseline_export(ctx).path)
    except HadmcError as exc:
        ctx.ui.warn(f"latency model: the deploy export of the original failed ({exc.one_line()})")
        return None


def round_to(ctx: BuildContext) -> int:
    """The channel multiple plans are rounded to: --round-to, else the step measured here, else the target's."""
    if ctx.settings.search.round_to:
        return int(ctx.settings.search.round_to)
    step = ctx.results.get("latency model", {}).get("measured_step")
    return int(step) if step else ctx.plan.round_to


STAGE = Stage("latency model", run, inputs, ("trace",), dry_run=True)
