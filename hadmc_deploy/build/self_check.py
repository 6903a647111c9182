"""The build's self-check against what it deployed, and the feedback it leaves for the next build.

The decide stage times the baseline and the pruned model side by side at the primary batch.
Where those graphs are what the measured table prices (its precision and batch, no layers
kept in float by the accuracy guard), the table's predictions are checked against them
(`latency.selfcheck.self_check`). Beyond the tolerance the measurements become the cached
table's `feedback`, so the next build on this machine prices plans on the measured scale
instead of repeating the miss. Only a scale is persisted: one build's two timings pin an
offset down exactly, noise included, and an offset would steer the next search's speedups;
within a build the closed loop's correction (build/correction.py) already fits both.

Each graph is timed twice in a build, in the latency check (right after the search) and in the
decide stage, each time as the fastest of 7 interleaved rounds; the check takes the faster of the
two (load only adds time, the rule of every timing here). Why: the machine's level moves between
them. A fresh-clone demo (2026-12-03) timed its INT8 original at 0.701 ms in the latency check and
0.876 ms in the decide stage a minute later, its plan 0.552 / 0.707 ms (the table predicted 0.710 /
0.547 ms); timed again afterwards, passes of 7 interleaved rounds each, the two stages' graphs ran
alike (0.658 / 0.659 ms, `tools/time_build_stages.py`) and the level of a whole pass moved: 0.64-0.68
/ 0.52-0.55 ms in 10 of 13 passes, 0.79-0.80 / 0.65-0.66 ms in 3, both graphs together. Judged on
the decide stage alone, that build flagged a 19% miss and wrote the slow spell into the cached
table as feedback x1.2 for the next build.

The scale is the median measured/predicted ratio over this build's timings and those of the
last builds on the same cached table (`FEEDBACK_HISTORY` timings in all, kept in the feedback's
`fitted_on`; a build within the tolerance adds its timings there without moving the scale). Why:
on these shared machines a whole decide stage can fall in a slow spell (a fresh-clone demo on an
AMD EPYC timed its INT8 original at 2.08 ms where the same build's evaluate stage had 1.55 ms and
the table 1.45 ms; minutes later it timed 1.2-1.35 ms), and one such build set the next
builds' scale alone, 1.35x too high.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.inputs import graph, latency_model, with_precision

#: timings (two per build: baseline and plan) the persisted feedback scale is the median over
FEEDBACK_HISTORY = 8


def guard_float_layers(ctx: BuildContext, model: str) -> int:
    """How many layers the accuracy guard kept in float in `model`'s ("baseline"/"pruned") INT8 graph."""
    return len((ctx.results.get("quantize", {}).get("float_nodes") or {}).get(model) or [])


def check_deployed(ctx: BuildContext, fastest: dict[str, float], batch: int) -> dict[str, Any]:
    """{"checked": bool, ...}: the self-check record for the report (and the feedback written, if any)."""
    from hadmc_deploy.latency.lut import Correction
    from hadmc_deploy.latency.predictor import LutLatencyModel
    from hadmc_deploy.latency.selfcheck import self_check

    lm = latency_model(ctx)
    if not isinstance(lm, LutLatencyModel):
        return {"checked": False, "why": "the latency model is not a measured table: nothing to check or correct"}
    meta, precision = lm.table.meta, ctx.plan.precision
    if meta.precision != precision or meta.batch != batch:
        return {"checked": False, "why": f"the table prices {meta.precision} at batch {meta.batch}; the candidates were timed at {precision}, batch {batch}"}
    keep = ctx.results.get("search", {}).get("keep") or {}
    measured: dict[str, tuple[list[Any], float]] = {}
    timings: dict[str, dict[str, float]] = {}  # per model: its timing in each stage that timed it
    skipped: list[str] = []
    for model, widths in (("baseline", None), ("pruned", keep or None)):
        name = f"{model}-{precision}"
        if name not in fastest or (model == "pruned" and not keep):
            continue
        if precision != "fp32" and guard_float_layers(ctx, model):
            skipped.append(f"{name}: the accuracy guard kept {guard_float_layers(ctx, model)} layer(s) in float, which the table prices in {precision}")
            continue
        specs = [replace(s, batch=batch) for s in with_precision(graph(ctx).layer_specs(widths), precision)]
        stage_ms = {"decide": fastest[name], **earlier_timing(ctx, model, precision, batch)}
        timings[model] = stage_ms
        measured[model] = (specs, min(stage_ms.values()))
    if not measured:
        return {"checked": False, "why": "; ".join(skipped) or "no candidate the table prices was timed"}
    earlier = lm.table.feedback.fitted_on if lm.table.feedback is not None else []
    earlier = [p for p in earlier if "predicted_ms" in p and "measured_ms" in p]
    keep = max(0, FEEDBACK_HISTORY - len(measured))
    history = earlier[max(0, len(earlier) - keep):] if keep else []
    check, corrected = self_check(lm, measured, scale_only_feedback=True, history=history)
    record: dict[str, Any] = {"checked": True, **check.to_dict(), "skipped": skipped, "feedback_written_to": None, "history": len(history), "timings": timings}
    if check.corrected and corrected is not lm:
        record["feedback"] = corrected.table.feedback.to_dict() if corrected.table.feedback is not None else None
        record["feedback_written_to"] = _persist_feedback(ctx, corrected.table.feedback)
    elif not check.flagged:  # a hit: its timings join the record, the scale stays
        base = lm.without_feedback()
        points = [*history, *({"predicted_ms": base.predict(specs).total_ms, "measured_ms": ms, "how": "within tolerance"} for specs, ms in measured.values())]
        kept = lm.table.feedback or Correction()
        record["history_written_to"] = _persist_feedback(ctx, Correction(kept.scale, kept.offset_ms, points))
    return record


def earlier_timing(ctx: BuildContext, model: str, precision: str, batch: int) -> dict[str, float]:
    """{"latency check": ms} where the latency check timed `model`'s graph ("baseline", or
    "pruned": the search's plan, checked by its widths) at `precision` and `batch`, else {}.
    All-`precision`: the graph the decide stage times unless the accuracy guard kept layers in
    float, which the caller has excluded."""
    check = ctx.results.get("latency check") or {}
    if not check.get("checked") or check.get("precision") != precision or check.get("batch") != batch:
        return {}
    if model == "pruned" and check.get("plan_widths") != {k: int(v) for k, v in (ctx.results.get("search", {}).get("keep") or {}).items()}:
        return {}  # another plan than the one deployed (or a record that does not say which)
    ms = (check.get("measured_ms") or {}).get("plan" if model == "pruned" else "baseline")
    return {"latency check": float(ms)} if ms else {}


def _persist_feedback(ctx: BuildContext, feedback: Any) -> str | None:
    """Write `feedback` into the cached table this build measured or reused (never into a table the
    user gave with --lut, nor into the build directory's copy, which is the latency stage's record)."""
    from hadmc_deploy.latency.lut import read_table

    source = ctx.results.get("latency model", {}).get("cache_file")
    if not source or not Path(source).is_file():
        return None
    table = read_table(source)
    table.feedback = feedback
    table.save(source)  # atomic
    return str(source)
