"""Stage 11, evaluate: accuracy on --eval and p50/p90 latency at every batch of every variant,
with the latency model's prediction beside each measurement."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.backends import Artifact, get
from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import (
    data_hash,
    dataset,
    eval_leak_warning,
    graph,
    latency_model,
    primary_batch,
    task,
    with_precision,
)
from hadmc_deploy.build.metric import CLASSIFY, METRIC_NAMES, artifact_score, onnx_score
from hadmc_deploy.build.side_by_side import add_speedups, int8_vs_fp32, time_interleaved
from hadmc_deploy.build.variants import all_variants, float_onnx, qdq_name, variant_name
from hadmc_deploy.evaluate import SECONDARY_TIMED_SECONDS, benchmark_artifact, file_size, label_order_warning
from hadmc_deploy.fileio import sha256_file, write_json_atomic


def inputs(ctx: BuildContext) -> dict[str, Any]:
    b = ctx.settings.benchmark
    return {"eval": data_hash(ctx, "eval"), "batch": list(ctx.plan.batch_sizes), "runs": b.runs, "warmup": b.warmup}


def predicted(ctx: BuildContext, model: str, precision: str) -> dict[str, Any]:
    """Latency-model prediction for a variant at each batch size, with what made it.

    A mixed variant is shown at its INT8 plan's price, labelled "(as all-INT8)" and never flagged
    as a miss: the table prices no float islands. Pricing them with the profiled FP32-minus-INT8
    times of the layers kept in float (tried) predicted the demo's mixed variants 73-75% below
    what they measured: the Q/DQ around a float island costs more than its layers save."""
    widths = ctx.results.get("search", {}).get("keep", {}) if model == "pruned" else {}
    lm = latency_model(ctx)
    priced_as = "int8" if precision == "mixed" else precision
    specs = with_precision(graph(ctx).layer_specs(widths or None), priced_as)
    out = {}
    for batch in ctx.plan.batch_sizes:
        pred = predictor_for(lm, priced_as, batch).predict([replace(s, batch=batch) for s in specs])
        out[str(batch)] = {"ms": float(pred.total_ms), "source": pred.source + (" (as all-INT8)" if precision == "mixed" else "")}
    return out


def predictor_for(lm: Any, precision: str, batch: int) -> Any:
    """`lm` where it is a table of this precision and batch (or no table), else the table's analytic
    fallback, whose predictions say "analytic". Why: a table prices one precision at one batch, and
    pricing the other variants through it printed "does not cover every layer" in every build."""
    table, fallback = getattr(lm, "table", None), getattr(lm, "fallback", None)
    if table is not None and fallback is not None and (table.meta.precision != precision or table.meta.batch != batch):
        return fallback
    return lm


def run(ctx: BuildContext) -> StageResult:
    evald = dataset(ctx, "eval")
    built = {v["name"]: v for v in ctx.results["backend build"].get("variants", [])}
    params = {"baseline": ctx.results["load"]["params"], "pruned": ctx.results.get("surgery", {}).get("params")}
    macs = {"baseline": ctx.results["load"]["macs"], "pruned": ctx.results.get("surgery", {}).get("macs")}
    form = ctx.plan.target.int8_form
    bench = ctx.settings.benchmark
    rows = []
    warnings: list[str] = [w for w in [eval_leak_warning(ctx)] if w]
    quant = ctx.results.get("quantize", {})
    for model, precision in all_variants(ctx):
        name = variant_name(model, precision)
        if precision == "mixed":
            onnx_file = ctx.path(quant[model]["mixed"]["path"])
        else:
            onnx_file = ctx.path(qdq_name(model, form)) if precision == "int8" else float_onnx(ctx, model)
        row: dict[str, Any] = {"name": name, "model": model, "precision": precision, "params": params[model], "macs": macs[model], "onnx": onnx_file.name, "onnx_sha256": sha256_file(onnx_file)}
        row["predicted"] = predicted(ctx, model, precision)
        qinfo = quant.get(model) or {}
        if precision in ("int8", "mixed") and qinfo.get("deployable") is False:
            row["agreement"] = {"refused": True, "reason": qinfo.get("reason")}
        entry = built.get(name)
        if entry is None and precision == "fp16":
            continue  # FP16 only means something as an engine built on the target
        if entry is not None:
            backend = get(entry["backend"])
            artifact = Artifact.load(ctx.path(entry["artifact"]))
            row.update({"backend": entry["backend"], "target": entry["target"], "artifact": entry["artifact"], "file_bytes": file_size(artifact.model_path)})
            confusion = _confusion(ctx, evald) if name == "baseline-fp32" else None
            row["accuracy"], row["detection"] = _score(ctx, entry["backend"], backend, artifact, evald, confusion) if evald is not None else (None, None)
            if confusion is not None and (warning := label_order_warning(confusion)):
                warnings.append(warning)
            row["accuracy_measured_with"] = f"{entry['backend']} artifact"
            # the primary batch is the decide stage's: it times every variant there side by side
            lat = benchmark_artifact(backend, artifact, tuple(b for b in ctx.plan.batch_sizes if b != primary_batch(ctx)), warmup=bench.warmup, runs=bench.runs, ui=ctx.ui,
                                     max_seconds=SECONDARY_TIMED_SECONDS)
            row["latency"] = {str(b): s for b, s in lat.per_batch.items()}
            backend.release_sessions()  # the next variant is timed with no idle session beside it
            row["session"] = {k: artifact.metadata.get(k) for k in ("session_options", "backend_version", "device", "precision_path", "int8_form") if k in artifact.metadata}
        else:
            row.update({"backend": None, "artifact": None, "file_bytes": file_size(onnx_file), "latency": {}})
            row["accuracy"], row["detection"] = onnx_score(onnx_file, evald, ui=ctx.ui) if evald is not None else (None, None)
            row["accuracy_measured_with"] = "onnxruntime CPU on the portable ONNX (no artifact built here)"
        rows.append(row)
    add_speedups(rows)
    int8_checks = confirm_int8_slowdowns(ctx, rows, skip_batch=primary_batch(ctx))
    summary = "; ".join(f"{r['name']} {r['accuracy']:.2f}%" for r in rows if r.get("accuracy") is not None) or f"{len(rows)} variants"
    return StageResult({"variants": rows, "int8_vs_fp32": int8_checks, "warnings": warnings, "metric": METRIC_NAMES[task(ctx)], "eval_source": ctx.settings.data.eval, "eval_samples": len(evald) if evald is not None else 0, "_summary": summary})


def _score(ctx: BuildContext, backend_name: str, backend: Any, artifact: Any, evald: Any, confusion: np.ndarray | None) -> tuple[float, dict[str, Any] | None]:
    """The artifact's metric on --eval (and its confusion counts), from an earlier build where the
    same model file ran through the same backend on the same images (`build/reuse.py`): a repeat
    build's original and its INT8 graph are the same files, and their passes over every --eval
    image are the stage's longest."""
    if not ctx.cache.enabled:
        return artifact_score(backend, artifact, evald, ui=ctx.ui, confusion=confusion)

    def run(path: Path) -> None:
        score, detail = artifact_score(backend, artifact, evald, ui=ctx.ui, confusion=confusion)
        write_json_atomic(path, {"score": score, "detail": detail, "confusion": confusion.tolist() if confusion is not None else None})

    # the session's options (threads, optimizers left off) and the device can move outputs too; the
    # timings that chose them cannot
    session = {k: v for k, v in (artifact.metadata.get("session_options") or {}).items() if not k.endswith("_measured")}
    key = reuse.file_key("score", artifact.model_path, backend=backend_name, eval=data_hash(ctx, "eval"), session=session, device=artifact.metadata.get("device"))
    record, earlier_build = reuse.reused("score", key, run, _score_record, ".json")
    if earlier_build and confusion is not None and record["confusion"] is not None:
        confusion[...] = np.asarray(record["confusion"], dtype=confusion.dtype)
    return record["score"], record["detail"]


def _score_record(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text())
    if not isinstance(record.get("score"), (int, float)) or "detail" not in record or "confusion" not in record:
        raise ValueError(f"{path}: not a stored score")
    return record


def _confusion(ctx: BuildContext, evald: Any) -> np.ndarray | None:
    """Zeroed (label x class) counts for the original's pass over labelled classifier --eval data, else None."""
    classes = ctx.results["load"].get("num_classes")
    if evald is None or task(ctx) != CLASSIFY or not classes or not getattr(evald, "labelled", False):
        return None
    return np.zeros((max(int(evald.num_classes), int(classes)), int(classes)), dtype=np.int64)


def confirm_int8_slowdowns(ctx: BuildContext, rows: list[dict[str, Any]], skip_batch: int | None = None) -> list[dict[str, Any]]:
    """Where one pass of single timings put a model's INT8 artifact behind its FP32 one at some
    batch, both timed again side by side (`side_by_side.time_interleaved`); the report advises FP32
    at that batch only when INT8 stays slower beyond the measured noise. Each single timing here is
    one short pass, and on a shared machine those moved by half: the demo's pruned variants at batch
    1 read 0.173 ms INT8 against 0.155 ms FP32, and 0.080 against 0.089 ms in interleaved rounds.
    `skip_batch` (the primary batch) is left to the decide stage, which times every candidate side
    by side there anyway (`report.decision_int8_checks`)."""
    by_name = {r["name"]: r for r in rows}
    checks = []
    for model in ("baseline", "pruned"):
        fp32, int8 = by_name.get(f"{model}-fp32"), by_name.get(f"{model}-int8")
        if not fp32 or not int8 or not fp32.get("artifact") or not int8.get("artifact"):
            continue
        for batch, stats in sorted(int8["latency"].items(), key=lambda kv: int(kv[0])):
            ref = fp32["latency"].get(batch)
            if not ref or stats["p50_ms"] <= ref["p50_ms"] or int(batch) == skip_batch:
                continue
            fastest, noise = time_interleaved(ctx, [fp32, int8], int(batch))
            fp32_ms, int8_ms = fastest[fp32["name"]], fastest[int8["name"]]
            checks.append(int8_vs_fp32(model, int(batch), fp32_ms, int8_ms, noise) | {"single_pass": {"fp32_ms": ref["p50_ms"], "int8_ms": stats["p50_ms"]}})
    return checks


STAGE = Stage("evaluate", run, inputs, ("backend build", "recover", "surgery", "search"))
