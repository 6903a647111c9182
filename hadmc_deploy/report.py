"""The build report: report.json (stable, versioned schema), report.md, PNG plots, and the
terminal summary. Every number in it was measured by this build's stages (or read from
their cached manifests, which say when they were measured).

Schema `hadmc-deploy/report` version 1. Consumers may rely on `REQUIRED` below; fields
are only ever added within a version.
"""

from __future__ import annotations

import time
from typing import Any

from hadmc_deploy.build.side_by_side import int8_vs_fp32, with_decision_timings
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
from hadmc_deploy.plots import plot_pareto, plot_widths
from hadmc_deploy.report_md import MEASURED_PREDICTORS

SCHEMA = "hadmc-deploy/report"
SCHEMA_VERSION = 1

#: top-level key -> type every report has (partial reports too).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "schema_version": int,
    "complete": bool,
    "created": str,
    "model": dict,
    "target": dict,
    "options": dict,
    "stages": list,
    "latency_model": dict,
    "search": dict,
    "width_plan": list,
    "recovery": dict,
    "export": dict,
    "quantization": dict,
    "backend": dict,
    "variants": list,
    "accuracy": dict,
    "versions": dict,
    "hashes": dict,
    "plots": dict,
}
#: keys every variant row has once the evaluate stage ran.
VARIANT_REQUIRED = ("name", "model", "precision", "accuracy", "latency", "speedup", "params", "macs", "file_bytes", "predicted", "backend")


def validate_report(report: dict[str, Any]) -> list[str]:
    """Problems with a report against the schema (empty when it conforms)."""
    problems = []
    for key, kind in REQUIRED.items():
        if key not in report:
            problems.append(f"missing key {key!r}")
        elif not isinstance(report[key], kind):
            problems.append(f"{key!r} is {type(report[key]).__name__}, expected {kind}")
    if report.get("schema") != SCHEMA or report.get("schema_version") != SCHEMA_VERSION:
        problems.append("wrong schema name or version")
    for row in report.get("variants", []):
        problems += [f"variant {row.get('name')!r} lacks {k!r}" for k in VARIANT_REQUIRED if k not in row]
    return problems


def _accuracy_story(ctx: Any, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the accuracy went: pruning, recovery, quantization; and the guard's verdict."""
    rec = ctx.results.get("recover", {}).get("accuracy", {}) or {}
    by = {v["name"]: v.get("accuracy") for v in variants}
    names = [v["name"] for v in variants]
    wanted = [f"{m}-{ctx.plan.precision}" for m in ("pruned", "baseline")]  # the pipeline's own variant
    final_name = next((n for n in wanted if n in names), names[-1] if names else None)
    baseline = by.get("baseline-fp32", rec.get("baseline"))
    story: dict[str, Any] = {
        "baseline": baseline,
        "pruned_before_recovery": rec.get("pruned"),
        "after_recovery": by.get("pruned-fp32", rec.get("recovered")),
        "final": by.get(final_name) if final_name else None,
        "final_variant": final_name,
        "eval_source": ctx.plan.options.get("eval"),
        "metric": ctx.results.get("evaluate", {}).get("metric", "top-1 accuracy (%)"),
    }
    steps: dict[str, float | None] = {"pruning": None, "recovery": None, "quantization": None}
    if baseline is not None and story["pruned_before_recovery"] is not None:
        steps["pruning"] = story["pruned_before_recovery"] - baseline
    if story["pruned_before_recovery"] is not None and story["after_recovery"] is not None:
        steps["recovery"] = story["after_recovery"] - story["pruned_before_recovery"]
    float_ref = story["after_recovery"] if story["after_recovery"] is not None else baseline
    if story["final"] is not None and float_ref is not None and final_name and final_name.endswith(("int8", "fp16")):
        steps["quantization"] = story["final"] - float_ref
    story["change_points"] = steps
    q = ctx.plan.settings.quantization
    if q.max_accuracy_drop is not None and baseline is not None and story["final"] is not None:
        drop = baseline - story["final"]
        parts = [f"{k} {v:+.2f}" for k, v in steps.items() if v is not None]
        story["guard"] = {"allowed": q.max_accuracy_drop, "drop": drop, "exceeded": drop > q.max_accuracy_drop, "where": ", ".join(parts) or "n/a", "allowed_by_flag": q.allow_accuracy_drop}
    return story


#: a prediction that misses its measurement by more than this is flagged.
PREDICTION_TOLERANCE = 0.10


def prediction_misses(ctx: Any, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every prediction that missed what this build measured by more than 10%."""
    misses = []
    check = ctx.results.get("latency check", {})
    if check.get("checked"):
        pred, meas = check["predicted_speedup"], check["measured_speedup"]
        if meas and abs(pred / meas - 1) > PREDICTION_TOLERANCE:
            misses.append({"what": "plan speedup (latency check)", "predicted": pred, "measured": meas, "error": pred / meas - 1})
    # the latency model predicts the least-loaded time: at the primary batch it is compared with the fastest
    # side-by-side round (the self-check's, the faster of two stages', where it took one), elsewhere the evaluate stage's p50
    decide = ctx.results.get("decide", {})
    sc = decide.get("self_check") or {}
    fastest_round = {c["name"]: c["p50_ms"] for c in decide.get("candidates") or []}
    fastest_round |= {f"{c['name']}-{ctx.plan.precision}": c["measured_ms"] for c in sc.get("plans") or [] if len((sc.get("timings") or {}).get(c["name"]) or {}) > 1}
    primary = str(decide.get("primary_batch"))
    for row in variants:
        for batch, stats in (row.get("latency") or {}).items():
            pred = (row.get("predicted") or {}).get(batch, {})
            if pred.get("source") not in MEASURED_PREDICTORS:
                continue  # an analytic (datasheet) estimate is labelled as such, not a measured model's miss
            p = pred.get("ms")
            side_by_side = batch == primary and row["name"] in fastest_round
            m = fastest_round[row["name"]] if side_by_side else stats.get("p50_ms")
            if p and m and abs(p / m - 1) > PREDICTION_TOLERANCE:
                what = f"{row['name']} latency at batch {batch} (ms{', p50 of the fastest side-by-side round' if side_by_side else ', p50'})"
                misses.append({"what": what, "predicted": p, "measured": m, "error": p / m - 1})
    return misses


def build_report(ctx: Any, partial: bool = False) -> dict[str, Any]:
    from hadmc_deploy.cache import tool_versions

    res = ctx.results
    plan = ctx.plan
    variants = with_decision_timings(res.get("evaluate", {}).get("variants", []), res.get("decide") or {})
    int8_checks = res.get("evaluate", {}).get("int8_vs_fp32", []) + decision_int8_checks(res.get("decide", {}))
    search = res.get("search", {})
    groups = search.get("groups", [])
    load = res.get("load", {})
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "complete": not partial,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_dir": str(plan.out_dir),
        "model": {"source": plan.model, "arch": load.get("arch", plan.arch), "kind": load.get("kind"), "input_shape": list(plan.input_shape), "params": load.get("params"), "macs": load.get("macs"), "num_classes": load.get("num_classes"), "outputs": load.get("outputs")},
        "target": {"name": plan.target.name, "backend": plan.target.backend, "description": plan.target.description, "isa": plan.target.isa, "int8_form": plan.target.int8_form, "precision": plan.precision, "round_to": plan.settings.search.round_to or res.get("latency model", {}).get("measured_step") or plan.round_to},
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.options.items()},
        "stages": [o.to_dict() for o in ctx.outcomes],
        "latency_model": {k: v for k, v in res.get("latency model", {}).items() if not k.startswith("_")},
        "search": {k: v for k, v in search.items() if k not in ("groups", "keep") and not k.startswith("_")},
        "width_plan": [{"group": g["id"], "before": g["before"], "after": g["after"], "saved_ms": g.get("saved_ms")} for g in groups],
        "recovery": {k: v for k, v in res.get("recover", {}).items() if not k.startswith("_")},
        "export": {k: _export_summary(v) for k, v in res.get("export", {}).items() if not k.startswith("_")},
        "quantization": {"calibration": {k: v for k, v in res.get("calibrate", {}).items() if not k.startswith("_")}, **{k: v for k, v in res.get("quantize", {}).items() if not k.startswith("_")}},
        "backend": {k: v for k, v in res.get("backend build", {}).items() if not k.startswith("_")},
        "variants": variants,
        "accuracy": _accuracy_story(ctx, variants),
        "versions": tool_versions(),
        "hashes": {"model_sha256": plan.model_sha256, **{f"{v['name']}_onnx_sha256": v.get("onnx_sha256") for v in variants}},
        "plots": {},
        "notes": _notes(int8_checks),
        "int8_vs_fp32": int8_checks,
        "decision": {k: v for k, v in res.get("decide", {}).items() if not k.startswith("_")},
        "closed_loop": {"rounds": list(ctx.loop.rounds), "latency_check": {k: v for k, v in res.get("latency check", {}).items() if not k.startswith("_")},
                        "correction": ctx.loop.correction.to_dict() if ctx.loop.correction is not None else None},
        "prediction_misses": prediction_misses(ctx, variants),
    }
    report["deploy"] = _deploy_summary(report["decision"])
    if res.get("recover", {}).get("mode") == "bn-recalibration":
        report["recovery"]["statement"] = "no --train data: recovery was BatchNorm statistics recalibration only (no fine-tuning)"
    elif res.get("recover", {}).get("agreement_after_bn"):
        report["recovery"]["statement"] = "no --train data: distilled from the original on the calibration images (their labels unused)"
    return report


def _deploy_summary(decision: dict[str, Any]) -> dict[str, Any] | None:
    """The one thing a user needs first: which artifact to deploy, and what it measured."""
    if not decision.get("deploy"):
        return None
    keys = ("deploy", "artifact", "reason", "primary_batch", "speedup_vs_fp32_original", "speedup_vs_original_at_precision", "accuracy_change", "budget")
    return {("variant" if k == "deploy" else k): decision.get(k) for k in keys}


def decision_int8_checks(decision: dict[str, Any]) -> list[dict[str, Any]]:
    """The INT8-vs-FP32 comparison at the primary batch, per model, from the decide stage's own
    side-by-side timings (the evaluate stage leaves that batch to them)."""
    p50 = {c["name"]: c["p50_ms"] for c in decision.get("candidates", [])}
    noise, batch = decision.get("noise", 0.0), decision.get("primary_batch")
    return [int8_vs_fp32(m, batch, p50[f"{m}-fp32"], p50[f"{m}-int8"], noise) for m in ("baseline", "pruned") if f"{m}-fp32" in p50 and f"{m}-int8" in p50]


def _notes(int8_checks: list[dict[str, Any]]) -> list[str]:
    """Measured facts a user should act on: INT8 slower than FP32 for a model at some batch on this
    target, when side-by-side timings (the decide stage's at the primary batch, the evaluate stage's
    re-timing elsewhere) confirmed it."""
    return [f"{c['model']}: INT8 measured slower than FP32 at batch {c['batch']} side by side ({c['int8_ms']:.3f} vs {c['fp32_ms']:.3f} ms p50, "
            f"fastest of {c['rounds']} interleaved rounds, noise ±{c['noise']:.0%}): deploy {c['model']}-fp32 at that batch size, or build with --precision fp32"
            for c in int8_checks if c.get("slower")]


def _export_summary(res: dict[str, Any]) -> dict[str, Any]:
    keep = ("path", "exporter", "exporter_fallback_reason", "simplifier", "opset", "max_abs_err", "max_rel_err", "size_bytes", "nodes_final")
    out = {k: res.get(k) for k in keep}
    out["verification"] = {k: res.get("verification", {}).get(k) for k in ("inputs", "samples", "passed", "rtol", "atol")}
    return out


def write_report(ctx: Any, report: dict[str, Any] | None = None, partial: bool = False) -> dict[str, Any]:
    """Write report.json, report.md and the plots into the build directory."""
    report = report or build_report(ctx, partial)
    out = ctx.plan.out_dir
    plots = {}
    if report["width_plan"]:
        plots["widths"] = plot_widths(report["width_plan"], out / "plots" / "widths.png")
    if any(v.get("latency") for v in report["variants"]):
        plots["pareto"] = plot_pareto(report["variants"], out / "plots" / "pareto.png")
    report["plots"] = {k: str(v.relative_to(out)) for k, v in plots.items() if v is not None}
    problems = validate_report(report)
    if problems:
        raise RuntimeError(f"internal: the report does not match its schema: {'; '.join(problems)}")
    write_json_atomic(out / "report.json", report)
    from hadmc_deploy.report_md import render_markdown

    write_text_atomic(out / "report.md", render_markdown(report))
    return report


def print_summary(ctx: Any, report: dict[str, Any]) -> None:
    """The final table on the terminal: one row per variant, then the stage list."""
    from rich.table import Table

    from hadmc_deploy.report_md import variant_cells

    ui = ctx.ui
    stages = Table(title="stages", title_justify="left")
    for col in ("stage", "status", "s", "detail"):
        stages.add_column(col, overflow="fold")
    for s in report["stages"]:
        style = {"failed": "red", "stopped": "yellow", "cached": "dim"}.get(s["status"])
        stages.add_row(s["name"], s["status"], f"{s['seconds']:.1f}", s["detail"][:160], style=style)
    ui.out.print(stages)
    batches = [str(b) for b in ctx.plan.batch_sizes]
    table = Table(title=f"{report['model']['source'] or report['model']['arch']} -> {report['target']['name']}: measured here (report.md has MACs, sizes, p90, predictions)", title_justify="left")
    table.add_column("variant", no_wrap=True)
    for col in ("acc %", *[f"p50 ms b{b}" for b in batches], *[f"x b{b}" for b in batches], "params"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in report["variants"]:
        cells = variant_cells(row, batches)
        n = len(batches)
        table.add_row(cells[0], cells[1].rstrip("%"), *cells[2 : 2 + 2 * n], cells[2 + 2 * n])
    ui.out.print(table)
    acc = report["accuracy"]
    if acc.get("change_points"):
        parts = [f"{k} {v:+.2f}" for k, v in acc["change_points"].items() if v is not None]
        if parts:
            # named: the pipeline's own variant, which is not always the one that deploys (the Deploy line's)
            final = f"{acc['final_variant']} {fmt_pct(acc.get('final'))}" if acc.get("final_variant") else f"final {fmt_pct(acc.get('final'))}"
            ui.out.print(f"accuracy: baseline {fmt_pct(acc.get('baseline'))} -> {final} ({', '.join(parts)} points)")
    for note in report.get("notes", []):
        ui.out.print(f"[yellow]note:[/yellow] {note}")
    msg = report["backend"].get("fallback_message")
    if msg:
        ui.out.print(f"[yellow]{msg}[/yellow]")
    from hadmc_deploy.report_md import decision_line

    ui.out.print(decision_line(report, ctx.plan.out_dir).replace("**", "").replace("`", ""))
    ui.out.print(f"report: {ctx.plan.out_dir / 'report.md'} (and report.json, plots/)")


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def print_dry_run(ctx: Any, stage_names: tuple[str, ...]) -> dict[str, Any]:
    """--dry-run: the stages, the predicted latency and speedup, and the layers to be narrowed."""
    ui = ctx.ui
    lat = ctx.results.get("latency model", {})
    search = ctx.results.get("search", {})
    ui.out.print(f"dry run: {ctx.plan.model or ctx.plan.arch} -> {ctx.plan.target.name} ({ctx.plan.target.backend}), precision {ctx.plan.precision}, build dir {ctx.plan.out_dir}")
    ui.out.print("stages: " + " -> ".join(stage_names))
    ui.out.print(f"latency model: {lat.get('label')} ({lat.get('lut_how')})")
    narrowed = [g for g in search.get("groups", []) if g["after"] != g["before"]]
    if search.get("_skipped"):
        ui.out.print(f"search: {search['_skipped']}")
    else:
        ui.out.print(f"predicted latency {search['baseline_ms']:.3f} ms -> {search['predicted_ms']:.3f} ms ({search['predicted_speedup']:.2f}x, budget {search['budget_ms']:.3f} ms)")
        ui.out.print(f"{len(narrowed)} of {len(search.get('groups', []))} channel groups narrowed:")
        for g in narrowed:
            ui.out.print(f"  {g['id']}: {g['before']} -> {g['after']}")
    return {
        "dry_run": True,
        "stages": list(stage_names),
        "latency_model": {k: v for k, v in lat.items() if not k.startswith("_")},
        "baseline_predicted_ms": search.get("baseline_ms", lat.get("baseline_predicted_ms")),
        "predicted_ms": search.get("predicted_ms"),
        "predicted_speedup": search.get("predicted_speedup"),
        "narrowed": [{"group": g["id"], "before": g["before"], "after": g["after"]} for g in narrowed],
    }
