"""What `prune` prints and writes beside its checkpoint: the original and the pruned model
timed side by side in ONNX Runtime, and the summary (JSON, Markdown, terminal table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.backends import get
from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.inputs import baseline_export, graph, loaded_model
from hadmc_deploy.build.stages.latency_check import timing_exporter
from hadmc_deploy.latency.whole_model import time_plans
from hadmc_deploy.timing import WHOLE_MODEL_RUNS
from hadmc_deploy.ui import UI


def measure_side_by_side(ctx: BuildContext, *, rounds: int, ui: UI) -> dict[str, Any]:
    """The original and the plan as deployed at the precision and batch the search priced, timed
    side by side: the latency check's own timings where it timed this plan (the budget was judged on
    them), else `rounds` interleaved rounds of both. Why the search's precision: the summary set an
    INT8 prediction beside FP32 timings (a CNN's 1.41x INT8 plan "measured 1.78x", and a slower
    measurement was blamed on the latency table)."""
    precision, batch = ctx.plan.precision, ctx.plan.input_shape[0]
    keep = {k: int(v) for k, v in ctx.results["surgery"]["keep"].items()}
    check = ctx.results.get("latency check") or {}
    if check.get("checked") and check.get("plan_widths") == keep:
        base, plan = check["measured_ms"]["baseline"], check["measured_ms"]["plan"]
        return {"backend": ctx.plan.target.backend, "precision": precision, "batch": batch, "original_ms": base, "pruned_ms": plan,
                "speedup": base / plan, "method": f"the latency check's fastest of {len(check.get('round_ratios') or [])} interleaved rounds, "
                                                  f"{precision}, batch {batch}"}
    g = graph(ctx)
    exporter = timing_exporter(ctx)
    timed = time_plans(loaded_model(ctx).model, g, {"original": g.full_widths(), "pruned": keep}, ctx.plan.input_shape, get(ctx.plan.target.backend),
                       workdir=ctx.path("prune_timing"), rounds=rounds, warmup=2, runs=WHOLE_MODEL_RUNS, exporter=exporter, precision=precision,
                       exported={"original": Path(baseline_export(ctx).path)} if exporter == "deploy" else None, ui=ui)
    base, plan = timed
    return {
        "backend": ctx.plan.target.backend, "precision": precision, "batch": batch,
        "original_ms": base.min_round_ms, "pruned_ms": plan.min_round_ms, "speedup": base.min_round_ms / plan.min_round_ms,
        "rounds": {"original": base.round_ms, "pruned": plan.round_ms},
        "method": f"the fastest of {rounds} interleaved rounds of {WHOLE_MODEL_RUNS}+ runs, {precision}, batch {batch}",
    }


def _timed_as(meas: dict[str, Any]) -> str:
    """How the measured row was timed: backend, precision, batch (summaries written before the
    precision was recorded were FP32 at batch 1 in ONNX Runtime)."""
    return f"{meas.get('backend', 'onnxruntime')}, {meas.get('precision', 'fp32')}, batch {meas.get('batch', 1)}"


def _fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def summary_markdown(s: dict[str, Any]) -> str:
    acc, pred, meas = s["accuracy"], s["predicted"], s["measured"]
    lines = [
        f"# Pruning summary: {s['checkpoint']}",
        "",
        f"Target `{s['target']}`, search `{s['search']['method']}`, importance `{s['importance']}`, channels rounded to {s['round_to']}; "
        f"latency model: {pred['source']}. Measured: {meas['method'] if meas else 'not timed (--timing-rounds 0)'}.",
        "",
        "| | original | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| predicted latency (ms) | {pred['baseline_ms']:.3f} | {pred['pruned_ms']:.3f} | {pred['speedup']:.2f}x |",
        (f"| measured latency, {_timed_as(meas)} (ms) | {meas['original_ms']:.3f} | {meas['pruned_ms']:.3f} | {meas['speedup']:.2f}x |" if meas else "| measured latency | not measured (--timing-rounds 0) | | |"),
        f"| params | {s['params']['original']:,} | {s['params']['pruned']:,} | {s['params']['original'] / max(s['params']['pruned'], 1):.2f}x |",
        f"| MACs | {s['macs']['original']:,} | {s['macs']['pruned']:,} | {s['macs']['original'] / max(s['macs']['pruned'], 1):.2f}x |",
        "",
        f"Measured speedup / predicted speedup: {_fmt(s['speedup_agreement'], '.3f')}.",
        "",
        f"Accuracy on {acc['data'] or 'no evaluation data'}: original {_fmt(acc['original'], suffix='%')}, after pruning {_fmt(acc['after_pruning'], suffix='%')}, "
        f"after BN recalibration {_fmt(acc['after_bn_recalibration'], suffix='%')}, after recovery {_fmt(acc['after_recovery'], suffix='%')}.",
        "",
        "| group | width | saved (ms, predicted) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {g['id']} | {g['before']} -> {g['after']} | {g['saved_ms']:.4f} |" for g in s["search"]["groups"]]
    if s.get("recovery"):
        messages = (s["recovery"].get("detail") or {}).get("messages") or ["no messages"]
        lines += ["", f"Recovery: {s['recovery']['mode']}; " + "; ".join(messages)]
    lines += [f"- note: {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"


def print_summary(s: dict[str, Any], ui: UI) -> None:
    from rich.table import Table

    acc, pred, meas = s["accuracy"], s["predicted"], s["measured"]
    table = Table(title="pruning summary", title_justify="left")
    for col in ("", "original", "pruned", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(f"predicted ms ({pred['source']})", f"{pred['baseline_ms']:.3f}", f"{pred['pruned_ms']:.3f}", f"{pred['speedup']:.2f}x")
    if meas:
        table.add_row(f"measured ms ({_timed_as(meas)})", f"{meas['original_ms']:.3f}", f"{meas['pruned_ms']:.3f}", f"{meas['speedup']:.2f}x")
    table.add_row("params", f"{s['params']['original']:,}", f"{s['params']['pruned']:,}", "")
    table.add_row("MACs", f"{s['macs']['original']:,}", f"{s['macs']['pruned']:,}", "")
    table.add_row("accuracy", _fmt(acc["original"], suffix="%"), _fmt(acc["after_recovery"], suffix="%"), f"after pruning {_fmt(acc['after_pruning'], suffix='%')}")
    ui.out.print(table)
    ui.out.print(f"measured/predicted speedup {_fmt(s['speedup_agreement'], '.3f')}; wrote {s['checkpoint']}; summary: {s['summary_md']}")
