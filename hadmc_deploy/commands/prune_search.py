"""`hadmc-deploy prune --speedup S | --latency-ms T`: prune to a latency budget, recover, measure.

trace -> importance -> latency model for --target (LUT from --lut, else the
analytic model, labelled) -> width search -> surgery -> recovery (distillation
on --train, BN recalibration alone without it) -> the pruned checkpoint ->
both models exported and timed side by side in ONNX Runtime (batch 1, the
interleaved rounds of `latency.whole_model`) -> summary JSON + Markdown next to
the checkpoint. The `prune` command (graph engineer) delegates here when a
latency budget is given; `add_budget_arguments` adds the options it does not.

Under torchrun every rank runs the (deterministic) search and the recovery
(DDP); only rank 0 writes files and measures.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from hadmc_deploy.errors import UsageError
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.loading import LoadedModel
from hadmc_deploy.ui import UI

#: option name -> default, for options the `prune` parser may not define (getattr fallbacks).
DEFAULTS: dict[str, Any] = {
    "target": "cpu",
    "speedup": None,
    "latency_ms": None,
    "search": "knapsack",
    "lut": None,
    "train": None,
    "eval": None,
    "epochs": 1,
    "distill": True,
    "importance": "l1",
    "round_to": None,
    "min_keep_ratio": 0.25,
    "lr": 0.01,
    "batch_size": 128,
    "kd_temperature": 4.0,
    "kd_alpha": 0.7,
    "feature_weight": 1.0,
    "feature_layers": None,
    "seed": 0,
    "train_limit": None,
    "eval_limit": None,
    "timing_rounds": 5,
    "force_lut": False,
}


def add_budget_arguments(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    """The recovery/search options beyond the agreed prune flags (skip those the caller defines)."""
    g = parser.add_argument_group("latency-guided search and recovery")
    opts = {
        "--min-keep-ratio": dict(type=float, default=DEFAULTS["min_keep_ratio"], help="no group keeps fewer than this share of its channels (default 0.25)"),
        "--lr": dict(type=float, default=DEFAULTS["lr"], help="recovery learning rate (default 0.01)"),
        "--batch-size": dict(type=int, default=DEFAULTS["batch_size"], help="recovery batch size per process (default 128)"),
        "--kd-temperature": dict(type=float, default=DEFAULTS["kd_temperature"], help="distillation temperature (default 4)"),
        "--kd-alpha": dict(type=float, default=DEFAULTS["kd_alpha"], help="weight of the distillation term vs the labels (default 0.7)"),
        "--feature-weight": dict(type=float, default=DEFAULTS["feature_weight"], help="weight of feature alignment (0: logits only; default 1)"),
        "--feature-layers": dict(default=None, help="comma-separated module names to align (default: the last 3 main blocks)"),
        "--seed": dict(type=int, default=DEFAULTS["seed"], help="recovery seed (default 0)"),
        "--train-limit": dict(type=int, default=None, help="use only this many training samples"),
        "--eval-limit": dict(type=int, default=None, help="use only this many evaluation samples"),
        "--timing-rounds": dict(type=int, default=DEFAULTS["timing_rounds"], help="interleaved ONNX Runtime timing rounds (default 5)"),
        "--episodes": dict(type=int, default=60, help="episodes for --search amc/ppo (default 60; fewer than 16/12 fall back to the knapsack)"),
        "--joint-precision": dict(action="store_true", help="--search ppo also chooses int8 or float per layer (the quantization agent)"),
    }
    for flag, kw in opts.items():
        if flag not in skip:
            g.add_argument(flag, **kw)


def _opt(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name, None)
    return DEFAULTS[name] if value is None else value


def run(args: argparse.Namespace, ui: UI, loaded: LoadedModel, input_shape: tuple[int, ...], graph: DependencyGraph) -> dict[str, Any]:
    from hadmc_deploy.data import Preprocess, check_matches_model, load_data
    from hadmc_deploy.distributed import launched_distributed
    from hadmc_deploy.importance import score_groups
    from hadmc_deploy.latency import load_latency_model
    from hadmc_deploy.profile import profile_model
    from hadmc_deploy.recover import RecoveryOptions, accuracy, recover
    from hadmc_deploy.search import search
    from hadmc_deploy.surgery import apply
    from hadmc_deploy.targets import get_target

    output = getattr(args, "output", None)
    if not output:
        raise UsageError("prune needs an output path for the pruned checkpoint", hint="-o pruned.pth")
    output = Path(output)
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    if not main:
        ui = UI(quiet=True)
    target = get_target(_opt(args, "target"), getattr(args, "targets_file", None))
    round_to = int(_opt(args, "round_to") or target.alignment("fp32"))
    model = loaded.model.eval()
    out_classes = profile_model(model, input_shape).output_shape[-1]

    def data(source: str | None, limit: int | None):  # noqa: ANN202
        if not source:
            return None
        d = load_data(source, Preprocess(), limit=limit, seed=_opt(args, "seed"))
        check_matches_model(d, input_shape, out_classes)
        return d

    train = data(_opt(args, "train"), getattr(args, "train_limit", None))
    val = data(_opt(args, "eval"), getattr(args, "eval_limit", None))

    criterion = _opt(args, "importance")
    importance_data = data(getattr(args, "data", None), None) if getattr(args, "data", None) else train
    scores = score_groups(model, graph, criterion, data=importance_data, ui=ui)
    latency_model = load_latency_model(target, _opt(args, "lut"), force=bool(getattr(args, "force_lut", False)), ui=ui)
    notes: list[str] = []
    if getattr(latency_model, "kind", "") == "analytic":
        notes.append("no latency table (--lut): predictions come from the analytic roofline model, expect them to miss; measure one with `hadmc-deploy lut`")
        ui.warn(notes[-1])
    rl_options = {
        "model": model, "val_data": val, "calib_data": train, "episodes": int(getattr(args, "episodes", 60) or 60),
        "seed": int(_opt(args, "seed")), "precisions": ("fp32", "int8") if getattr(args, "joint_precision", False) else (),
    }
    result = search(
        graph, scores, latency_model, method=_opt(args, "search"), speedup=getattr(args, "speedup", None),
        latency_ms=getattr(args, "latency_ms", None), round_to=round_to, min_keep_ratio=_opt(args, "min_keep_ratio"),
        rl_options=rl_options, ui=ui,
    )
    if main:
        result.print_plan(ui)
    pruned, plan = apply(model, graph, result.plan, scores=scores)
    plan.meta.update(result.plan.meta)

    recovery_dir = output.parent / f"{output.stem}-prune"
    feature_layers = _opt(args, "feature_layers")
    options = RecoveryOptions(
        epochs=int(_opt(args, "epochs")), lr=float(_opt(args, "lr")), batch_size=int(_opt(args, "batch_size")),
        distill=bool(_opt(args, "distill")), temperature=float(_opt(args, "kd_temperature")), alpha=float(_opt(args, "kd_alpha")),
        feature_weight=float(_opt(args, "feature_weight")),
        feature_layers=tuple(s.strip() for s in feature_layers.split(",") if s.strip()) if feature_layers else None,
        seed=int(_opt(args, "seed")), checkpoint_path=str(recovery_dir / "recovery-best.pt"),
    )
    acc_original = accuracy(model, val) if val is not None else None
    recovered = None
    if train is not None or val is not None:
        recovered = recover(pruned, model, train, val, options, ui)
        pruned = recovered.model
        for message in recovered.messages:
            ui.log(f"recovery: {message}")
    else:
        notes.append("no --train or --eval data: no BN recalibration or fine-tuning, and no accuracy measured")
    if launched_distributed() and not main:
        return {"rank": rank}
    pruned.eval()

    from hadmc_deploy.pruned_checkpoint import save_pruned

    extra = {"search": json.loads(json.dumps(result.to_dict())), "recovery": json.loads(json.dumps(recovered.to_dict(), default=str)) if recovered else None}
    save_pruned(output, pruned, loaded, plan, input_shape, extra={k: v for k, v in extra.items() if v is not None})
    measured = _measure(model, pruned, input_shape, recovery_dir, rounds=int(_opt(args, "timing_rounds")), ui=ui)
    p_orig, p_pruned = profile_model(model, input_shape), profile_model(pruned, input_shape)
    asked = getattr(args, "speedup", None)
    if asked and measured["speedup"] < asked:
        notes.append(
            f"measured speedup {measured['speedup']:.2f}x is below the requested {asked:g}x (predicted {result.predicted_speedup:.2f}x): "
            "the latency model is off for this plan; re-measure the table (`hadmc-deploy lut`) or ask for a little more"
        )
        ui.warn(notes[-1])
    summary = {
        "checkpoint": str(output),
        "target": target.name,
        "round_to": round_to,
        "importance": criterion,
        "search": result.to_dict(),
        "predicted": {"baseline_ms": result.baseline_ms, "pruned_ms": result.predicted_ms, "speedup": result.predicted_speedup, "source": result.source},
        "measured": measured,
        "speedup_agreement": measured["speedup"] / result.predicted_speedup,
        "params": {"original": p_orig.params, "pruned": p_pruned.params},
        "macs": {"original": p_orig.macs, "pruned": p_pruned.macs},
        "accuracy": {
            "data": getattr(val, "source", None),
            "original": acc_original,
            "after_pruning": recovered.accuracy_before if recovered else None,
            "after_bn_recalibration": recovered.accuracy_after_bn if recovered else None,
            "after_recovery": recovered.accuracy_after if recovered else None,
        },
        "recovery": recovered.to_dict() if recovered else None,
        "notes": notes + result.notes,
    }
    summary_json = recovery_dir / "summary.json"
    write_json_atomic(summary_json, json.loads(json.dumps(summary, default=str)))
    write_text_atomic(recovery_dir / "summary.md", summary_markdown(summary))
    summary["summary_json"] = str(summary_json)
    summary["summary_md"] = str(recovery_dir / "summary.md")
    _print_summary(summary, ui)
    return summary


def _measure(original: torch.nn.Module, pruned: torch.nn.Module, input_shape: tuple[int, ...], workdir: Path, *, rounds: int, ui: UI) -> dict[str, Any]:
    """Export both models as deployment does and time them side by side in ONNX Runtime."""
    from hadmc_deploy.backends import get
    from hadmc_deploy.export import export_onnx
    from hadmc_deploy.latency.whole_model import time_onnx_interleaved

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
        f"latency model: {pred['source']}. Measured: {meas['method']} in ONNX Runtime.",
        "",
        "| | original | pruned | ratio |",
        "|---|---:|---:|---:|",
        f"| predicted latency (ms) | {pred['baseline_ms']:.3f} | {pred['pruned_ms']:.3f} | {pred['speedup']:.2f}x |",
        f"| measured latency, ORT batch 1 (ms) | {meas['original_ms']:.3f} | {meas['pruned_ms']:.3f} | {meas['speedup']:.2f}x |",
        f"| params | {s['params']['original']:,} | {s['params']['pruned']:,} | {s['params']['original'] / max(s['params']['pruned'], 1):.2f}x |",
        f"| MACs | {s['macs']['original']:,} | {s['macs']['pruned']:,} | {s['macs']['original'] / max(s['macs']['pruned'], 1):.2f}x |",
        "",
        f"Measured speedup / predicted speedup: {s['speedup_agreement']:.3f}.",
        "",
        f"Accuracy on {acc['data'] or 'no evaluation data'}: original {_fmt(acc['original'], suffix='%')}, after pruning {_fmt(acc['after_pruning'], suffix='%')}, "
        f"after BN recalibration {_fmt(acc['after_bn_recalibration'], suffix='%')}, after recovery {_fmt(acc['after_recovery'], suffix='%')}.",
        "",
        "| group | width | saved (ms, predicted) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {g['id']} | {g['before']} -> {g['after']} | {g['saved_ms']:.4f} |" for g in s["search"]["groups"]]
    if s.get("recovery"):
        lines += ["", f"Recovery: {s['recovery']['mode']}; " + "; ".join(s["recovery"]["messages"] or ["no messages"])]
    lines += [f"- note: {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"


def _print_summary(s: dict[str, Any], ui: UI) -> None:
    from rich.table import Table

    acc, pred, meas = s["accuracy"], s["predicted"], s["measured"]
    table = Table(title="pruning summary", title_justify="left")
    for col in ("", "original", "pruned", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(f"predicted ms ({pred['source']})", f"{pred['baseline_ms']:.3f}", f"{pred['pruned_ms']:.3f}", f"{pred['speedup']:.2f}x")
    table.add_row("measured ms (ORT, batch 1)", f"{meas['original_ms']:.3f}", f"{meas['pruned_ms']:.3f}", f"{meas['speedup']:.2f}x")
    table.add_row("params", f"{s['params']['original']:,}", f"{s['params']['pruned']:,}", "")
    table.add_row("MACs", f"{s['macs']['original']:,}", f"{s['macs']['pruned']:,}", "")
    table.add_row("accuracy", _fmt(acc["original"], suffix="%"), _fmt(acc["after_recovery"], suffix="%"), f"after pruning {_fmt(acc['after_pruning'], suffix='%')}")
    ui.out.print(table)
    ui.out.print(f"measured/predicted speedup {s['speedup_agreement']:.3f}; summary: {s['summary_md']}")
