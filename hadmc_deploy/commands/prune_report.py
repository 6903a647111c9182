"""What `prune` prints and writes beside its checkpoint: the original and the pruned model
timed side by side in ONNX Runtime, and the summary (JSON, Markdown, terminal table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hadmc_deploy.backends import get
from hadmc_deploy.export import export_onnx
from hadmc_deploy.latency.whole_model import time_onnx_interleaved
from hadmc_deploy.ui import UI


def measure_side_by_side(original: torch.nn.Module, pruned: torch.nn.Module, input_shape: tuple[int, ...], workdir: Path, *, rounds: int, ui: UI) -> dict[str, Any]:
    """Export both models as deployment does and time them side by side in ONNX Runtime."""
    workdir.mkdir(parents=True, exist_ok=True)
    shape = (1, *input_shape[1:])
    paths = []
    for name, m in (("original", original), ("pruned", pruned)):
        path = workdir / f"{name}.onnx"
        export_onnx(m, shape, path, ui=ui)
        paths.append(path)
    backend = get("onnxruntime")
    timed = time_onnx_interleaved(paths, backend, batch=1, rounds=rounds, warmup=10, runs=50, ui=ui)
    (orig_ms, orig_rounds), (pruned_ms, pruned_rounds) = (t[:2] for t in timed)  # (median, per-round medians, ...)
    return {
        "backend": "onnxruntime",
        "batch": 1,
        "original_ms": orig_ms,
        "pruned_ms": pruned_ms,
        "speedup": orig_ms / pruned_ms,
        "rounds": {"original": orig_rounds, "pruned": pruned_rounds},
        "onnx": {"original": str(paths[0]), "pruned": str(paths[1])},
        "method": f"median over {rounds} interleaved rounds of the p50 of 50 runs (10 warm-up), batch 1",
    }


def _fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def summary_markdown(s: dict[str, Any]) -> str:
    acc, pred, meas = s["accuracy"], s["predicted"], s["measured"]
    lines = [
        f"# Pruning summary: {s['checkpoint']}",
        "",
        f"Target `{s['target']}`, search `{s['search']['method']}`, importance `{s['importance']}`, channels rounded to {s['round_to']}; "
        f"latency model: {pred['source']}. Measured: {meas['method'] + ' in ONNX Runtime' if meas else 'not timed (--timing-rounds 0)'}.",
        "",
        "| | original | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| predicted latency (ms) | {pred['baseline_ms']:.3f} | {pred['pruned_ms']:.3f} | {pred['speedup']:.2f}x |",
        (f"| measured latency, ORT batch 1 (ms) | {meas['original_ms']:.3f} | {meas['pruned_ms']:.3f} | {meas['speedup']:.2f}x |" if meas else "| measured latency | not measured (--timing-rounds 0) | | |"),
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
        table.add_row("measured ms (ORT, batch 1)", f"{meas['original_ms']:.3f}", f"{meas['pruned_ms']:.3f}", f"{meas['speedup']:.2f}x")
    table.add_row("params", f"{s['params']['original']:,}", f"{s['params']['pruned']:,}", "")
    table.add_row("MACs", f"{s['macs']['original']:,}", f"{s['macs']['pruned']:,}", "")
    table.add_row("accuracy", _fmt(acc["original"], suffix="%"), _fmt(acc["after_recovery"], suffix="%"), f"after pruning {_fmt(acc['after_pruning'], suffix='%')}")
    ui.out.print(table)
    ui.out.print(f"measured/predicted speedup {_fmt(s['speedup_agreement'], '.3f')}; wrote {s['checkpoint']}; summary: {s['summary_md']}")
