"""Validate the measured latency model: predicted vs measured latency of random plans, as deployed.

Per cell (model x precision x batch): measure the table the way a build does
(`hadmc_deploy.latency.auto.measure_table`: staircase probe, interleaved grid,
off-grid points, per-layer context factors from profiling the deployed full and
off-grid plans), draw random plans (half aligned to the measured step, half not),
build each exactly as a build deploys it (export_onnx, backend.build, INT8 with
write_qdq's ORT placement) and time them interleaved (min over rounds of the
per-round median). Reported beside the LUT model: a MACs-proportional predictor
(k fitted on the full model) and the noise floor (the full model timed in every
round: relative range of its per-round medians).

`--issue` adds issue 13's checks: the demo CNN at 1x1x96x96, plans pruned by ratio
0.3 and 0.6 without rounding, and a second table measured from scratch (whole-model
predictions of both tables compared).

    .venv/bin/python tools/validate_latency_model.py --issue --clock cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency.auto import MeasureOptions, measure_table  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.context_plans import calibration_plans  # noqa: E402
from hadmc_deploy.latency.context_probe import whole_model_ms  # noqa: E402
from hadmc_deploy.latency.lut import cpu_fingerprint, read_table  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.latency.predictor import LutLatencyModel  # noqa: E402
from hadmc_deploy.latency.speed_anchor import table_anchor  # noqa: E402
from hadmc_deploy.latency.stated_spread import agree_within, stated_spread  # noqa: E402
from hadmc_deploy.models import zoo  # noqa: E402
from hadmc_deploy.models.demo import demo_cnn  # noqa: E402
from hadmc_deploy.models.mobilenet import mobilenet_v2  # noqa: E402
from hadmc_deploy.models.resnet import resnet18  # noqa: E402
from hadmc_deploy.targets import get_target  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS  # noqa: E402
from hadmc_deploy.ui import UI, quiet_ui  # noqa: E402

#: the machine's anchor references of a validation run (latency/speed_anchor.py), in its workdir.
ANCHOR_STORE = "speed-anchor.json"


class GroupedCNN(nn.Module):
    """A small grouped-conv CNN (ResNeXt-like 3x3 convs with 4 groups) for the grouped-conv cell."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 1, 1, groups=4), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 128, 1), nn.BatchNorm2d(128), nn.ReLU(),
            nn.Conv2d(128, 256, 3, 2, 1, groups=4), nn.BatchNorm2d(256), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _InceptionBlock(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; pool -> 1x1) concatenated."""

    def __init__(self, cin: int, b1: int, b2: tuple[int, int], b3: tuple[int, int], b4: int) -> None:
        super().__init__()
        self.b1 = _ConvBN(cin, b1, 1)
        self.b2 = nn.Sequential(_ConvBN(cin, b2[0], 1), _ConvBN(b2[0], b2[1], 3))
        self.b3 = nn.Sequential(_ConvBN(cin, b3[0], 1), _ConvBN(b3[0], b3[1], 3), _ConvBN(b3[1], b3[1], 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _ConvBN(cin, b4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class InceptionCNN(nn.Module):
    """A small Inception-like CNN: ONNX Runtime runs its branches in another order than the source
    lists them, which keys alone in execution order pair wrongly (latency/kernel_pairing.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvBN(3, 32, 3, 2), _ConvBN(32, 64, 3))
        self.block1 = _InceptionBlock(64, 32, (48, 64), (16, 32), 32)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.block2 = _InceptionBlock(160, 64, (64, 96), (32, 48), 32)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(240, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))


MODELS = {
    "resnet18": (lambda: resnet18(), (3, 224, 224)),
    "mobilenet_v2": (lambda: mobilenet_v2(), (3, 224, 224)),
    "demo": (lambda: demo_cnn(), (1, 28, 28)),
    "demo96": (lambda: demo_cnn(), (1, 96, 96)),
    "grouped": (lambda: GroupedCNN(), (3, 64, 64)),
    "inception": (lambda: InceptionCNN(), (3, 64, 64)),
    # channel shuffles: its context plans are exported as shipped (TorchScript's graph runs other kernels)
    "shufflenet_v2": (lambda: zoo.shufflenet_v2_x1_0(num_classes=10), (3, 64, 64)),
    # not in the validation matrix the predictor was developed on: squeeze-excite gating, swish and
    # hard-swish, grouped stages (docs/latency_model.md, "Models the predictor was not developed on")
    "efficientnet_b0": (lambda: zoo.efficientnet_b0(num_classes=10), (3, 96, 96)),
    "regnet_x_200mf": (lambda: zoo.regnet_x_200mf(num_classes=10), (3, 96, 96)),
    "mobilenet_v3_small": (lambda: zoo.mobilenet_v3_small(num_classes=10), (3, 96, 96)),
    # channels-last Linear MLPs (ConvNeXt blocks): their rows per sample (docs/latency_model.md, "ConvNeXt")
    "convnext_tiny": (lambda: zoo.convnext_tiny(num_classes=10), (3, 64, 64)),
}


def cell_model(arch: str, batch: int):  # noqa: ANN201
    """(model, input shape, graph) of a cell's model at `batch`, its weights seeded as every tool here seeds them."""
    torch.manual_seed(0)
    build, chw = MODELS[arch]
    model = build().eval()
    shape = (batch, *chw)
    return model, shape, trace(model, shape)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _legal(g, w: int) -> int:  # noqa: ANN001
    if g.granularity > 1:
        w = max(g.granularity, (w // g.granularity) * g.granularity)
    return min(g.width, max(w, g.min_width, 1))


def draw_plans(graph, n: int, step: int, seed: int) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """Half aligned to `step`, half one-off widths (what `prune --ratio` without --round-to gives)."""
    rng = np.random.default_rng(seed)
    plans = {}
    for i in range(n):
        widths = {}
        for g in graph.prunable_groups:
            w = int(round(g.width * rng.uniform(0.3, 1.0)))
            if i % 2 == 0:
                w = max(step, int(round(w / step)) * step)
            elif step > 1 and w % step == 0:
                w -= 1
            widths[g.id] = _legal(g, w)
        plans[f"{'aligned' if i % 2 == 0 else 'unaligned'}{i:02d}"] = widths
    return plans


def ratio_plans(graph, ratios: tuple[float, ...]) -> dict[str, dict[str, int]]:  # noqa: ANN001
    return {f"ratio{r}": {g.id: _legal(g, int(round(g.width * (1 - r)))) for g in graph.prunable_groups} for r in ratios}


def time_deployed(model, graph, plans, shape, precision, rounds, runs, clock, ui, anchor=None):  # noqa: ANN001, ANN201
    """({plan: [per-round medians]}, {plan: ran a round in a fast window}) of the plans built as
    deployed, interleaved. With the table's speed anchor (latency/speed_anchor.py) a plan none of
    whose rounds ran in a fast window of the machine gets up to 4 more, as the table's entries did."""
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="hadmc-validate-") as tmp:
        arts = {}
        for name, widths in ui.track(list(plans.items()), "building plans as deployed"):
            arts[name] = Path(build_deployed_artifact(model, graph, widths, shape, backend, precision, Path(tmp), name)[1].model_path)
        rounds_ms: dict[str, list[float]] = {n: [] for n in plans}
        quiet = dict.fromkeys(plans, anchor is None)

        def time_round(names: list[str]) -> None:
            for name in names:
                if anchor is not None:
                    quiet[name] |= anchor.is_quiet()
                rounds_ms[name].append(whole_model_ms(arts[name], shape[0], None, runs, clock))

        for _ in ui.track(range(rounds), "timing plans (interleaved)"):
            time_round(list(arts))
        for _ in range(4 if anchor is not None else 0):
            slow = [n for n, q in quiet.items() if not q]
            if not slow:
                break
            time_round(slow)
    return rounds_ms, quiet


def fit_plans(table, graph, count: int) -> dict[str, dict[str, int]]:  # noqa: ANN001
    """`count` of the table's context-fit plans (not the full model; evenly spaced by the time the fit
    measured), to be timed again in the validation's rounds. Why: on the shared 2-vCPU machines here
    two-thread timings move in phases that need not move every plan alike (a trace slowed a grouped
    CNN's pruned plans by 24-39% and its full model by 6%: docs/latency_model.md, "Two threads, one
    thread"), so the full model's drift does not say whether a cell's miss is the model or the
    machine; the fit's own plans, timed beside the random ones, say how far the machine moved their
    speedups between the fit and the validation."""
    rows = [r for r in (table.context.fitted_on if table.context else []) if r["plan"] != "full"]
    if count <= 0 or not rows:
        return {}
    rows.sort(key=lambda r: r["measured_ms"])
    picks = dict.fromkeys(rows[round(i * (len(rows) - 1) / max(count - 1, 1))]["plan"] for i in range(min(count, len(rows))))
    widths = calibration_plans(graph, table.context.step)
    return {name: widths[name] for name in picks if name in widths}


def fit_plan_moves(table, retimed: list[dict], full_ms: float) -> list[dict]:  # noqa: ANN001
    """Per re-timed fit plan: its time over the full model's as the fit measured it and as the
    validation's rounds did, and how far that speedup moved (%). The fit's times are its estimate of
    the fastest of 7 rounds, the validation's the fastest of its rounds: both sides are ratios to the
    full model timed the same way, so a bias the two estimators share cancels."""
    fitted = {r["plan"]: r["measured_ms"] for r in (table.context.fitted_on if table.context else [])}
    moves = []
    for r in retimed:
        name = r["plan"].removeprefix("fit:")
        fit_ratio, now_ratio = fitted[name] / fitted["full"], r["measured_ms"] / full_ms
        moves.append({"plan": name, "fit_ms": fitted[name], "validation_ms": r["measured_ms"], "round_spread_pct": r["round_spread_pct"],
                      "speedup_move_pct": 100 * (fit_ratio / now_ratio - 1)})
    return moves


def table_quiet(table) -> str | None:  # noqa: ANN001
    """Context plans timed in a fast window of the machine, of all (None: no anchor)."""
    rows = table.context.fitted_on if table.context else []
    flags = [r["quiet"] for r in rows if "quiet" in r]
    return f"{sum(flags)}/{len(flags)}" if flags else None


def predict(model: LutLatencyModel, graph, widths, precision: str, batch: int) -> float:  # noqa: ANN001
    return model.predict([replace(s, precision=precision, batch=batch) for s in graph.layer_specs(widths)]).total_ms


def macs(graph, widths) -> int:  # noqa: ANN001
    return sum(s.macs() for s in graph.layer_specs(widths))


def run_cell(arch: str, precision: str, batch: int, args: argparse.Namespace, ui: UI, extra_plans=None) -> dict:  # noqa: ANN001
    model, shape, graph = cell_model(arch, batch)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    lut = work / f"lut-{arch}-{precision}-b{batch}-{args.clock}.json"
    if lut.exists() and args.remeasure:
        lut.unlink()
    # the machine's anchor reference is kept in the workdir: shared by the cells, as by every table of a machine
    opts = MeasureOptions(clock=args.clock, anchor=True, speed_gate=args.speed_gate, anchor_store=work / ANCHOR_STORE)
    table, info = measure_table(model, graph, shape, get_target("cpu"), precision, batch, lut, budget_s=args.lut_budget, options=opts, ui=ui)
    lm = LutLatencyModel(table, source=str(lut))
    step = table.alignment()
    plans = {"full": graph.full_widths(), **draw_plans(graph, args.plans, step, args.seed), **(extra_plans(graph) if extra_plans else {})}
    refit = fit_plans(table, graph, args.retime_fit)
    plans.update({f"fit:{name}": widths for name, widths in refit.items()})
    monitor = table_anchor(table, None)  # the machine's speed now against its reference (calibrated here)
    anchor = monitor if args.speed_gate else None
    rounds, quiet = time_deployed(model, graph, plans, shape, precision, args.rounds, args.runs, args.clock, ui, anchor)
    measured = {n: min(r) for n, r in rounds.items()}
    k = measured["full"] / macs(graph, plans["full"])
    rows = []
    for name, widths in plans.items():
        p = predict(lm, graph, widths, precision, batch)
        rows.append({"plan": name, "measured_ms": measured[name], "quiet": quiet[name], "rounds": len(rounds[name]), "lut_ms": p, "macs_ms": k * macs(graph, widths),
                     "lut_err_pct": 100 * (p - measured[name]) / measured[name], "round_spread_pct": 100 * (max(rounds[name]) - measured[name]) / measured[name]})
    full_row = rows[0]
    for r in rows:  # speedups over the full model timed in the same rounds: what a budget search compares
        r["lut_ratio_err_pct"] = 100 * ((r["lut_ms"] / full_row["lut_ms"]) / (r["measured_ms"] / full_row["measured_ms"]) - 1)
    retimed = [r for r in rows if r["plan"].startswith("fit:")]
    rows = [r for r in rows if not r["plan"].startswith("fit:")]
    held = [r for r in rows if r["plan"] != "full"]
    fit_full = next((f["measured_ms"] for f in (table.context.fitted_on if table.context else []) if f["plan"] == "full"), None)
    fit_moves = fit_plan_moves(table, retimed, full_row["measured_ms"])
    m = [r["measured_ms"] for r in held]
    full_rounds = rounds["full"]
    cell = {
        "arch": arch, "input": list(shape), "precision": precision, "batch": batch, "clock": args.clock,
        "step": step, "penalty": table.staircase.penalty if table.staircase else None, "mode": table.staircase.mode if table.staircase else None,
        # the step came from the profiled deployed graphs (the isolated probe found none, or another)
        "context_penalty": table.context.unaligned_penalty if table.staircase and table.staircase.step != step and table.context and table.context.step == step else None,
        "table_seconds": info["seconds"], "phases": info["phases"], "entries": len(table), "context": table.context is not None,
        "context_error": info.get("context_error"),
        "lut_mape": float(np.mean([abs(r["lut_err_pct"]) for r in held])), "lut_max_err": float(np.max([abs(r["lut_err_pct"]) for r in held])),
        "anchor": None if anchor is None else {**anchor.to_dict(), "slowdown": anchor.slowdown()},
        "slowdown": {"table": (table.meta.method.get("anchor") or {}).get("slowdown"),
                     "validation": monitor.calibrated_ms / monitor.reference_ms if monitor and monitor.calibrated_ms else None},
        "quiet_plans": sum(quiet.values()) if anchor is not None else None, "table_quiet": table_quiet(table),
        "lut_spearman": spearman([r["lut_ms"] for r in held], m),
        "lut_ratio_mape": float(np.mean([abs(r["lut_ratio_err_pct"]) for r in held])),
        "fit_full_ms": fit_full, "drift_pct": None if fit_full is None else 100 * (measured["full"] / fit_full - 1),
        "macs_mape": float(np.mean([100 * abs(r["macs_ms"] - r["measured_ms"]) / r["measured_ms"] for r in held])),
        "macs_spearman": spearman([r["macs_ms"] for r in held], m),
        "noise_floor_pct": 100 * (max(full_rounds) - min(full_rounds)) / min(full_rounds),
        "median_round_spread_pct": float(np.median([r["round_spread_pct"] for r in rows])),
        # the table's stated spread (latency/stated_spread.py) and how many random plans measured within it
        "stated_spread_pct": None if (spread := stated_spread(table)) is None else 100 * spread,
        "within_stated_spread": None if spread is None else sum(abs(r["lut_err_pct"]) <= 100 * spread for r in held),
        "rows": rows, "lut": str(lut), "fit_plans_retimed": fit_moves,
    }
    ui.log(f"{arch} {precision} b{batch}: LUT MAPE {cell['lut_mape']:.1f}% rho {cell['lut_spearman']:.2f} | MACs {cell['macs_mape']:.1f}% | noise {cell['noise_floor_pct']:.1f}%")
    return cell


def repeatability(arch: str, precision: str, batch: int, args: argparse.Namespace, ui: UI, first: dict) -> dict:
    """A second table from scratch; whole-model predictions of both tables on the cell's plans."""
    model, shape, graph = cell_model(arch, batch)
    lut2 = Path(args.workdir) / f"lut-{arch}-{precision}-b{batch}-{args.clock}-second.json"
    if lut2.exists():
        lut2.unlink()
    table2, _ = measure_table(model, graph, shape, get_target("cpu"), precision, batch, lut2, budget_s=args.lut_budget, options=MeasureOptions(clock=args.clock, anchor=True, speed_gate=args.speed_gate, anchor_store=Path(args.workdir) / ANCHOR_STORE), ui=ui)
    from hadmc_deploy.latency.lut import read_table

    lm1, lm2 = LutLatencyModel(read_table(first["lut"])), LutLatencyModel(table2)
    # the first cell's plans (drawn on its table's step), so the names mean the same plans in both reports
    plans = {"full": graph.full_widths(), **draw_plans(graph, args.plans, read_table(first["lut"]).alignment(), args.seed), **ratio_plans(graph, (0.3, 0.6))}
    p1 = {n: predict(lm1, graph, w, precision, batch) for n, w in plans.items()}
    p2 = {n: predict(lm2, graph, w, precision, batch) for n, w in plans.items()}
    diffs = {n: 100 * (p2[n] / p1[n] - 1) for n in plans}
    anchors = [t.meta.method.get("anchor") or {} for t in (read_table(first["lut"]), table2)]
    ratio_diffs = {n: 100 * ((p2[n] / p2["full"]) / (p1[n] / p1["full"]) - 1) for n in plans if n != "full"}
    refs = [a.get("reference_ms") for a in anchors]
    # how far the two tables' isolated conv prices lie apart: the noise the context's in-context
    # times replace (method v10), shown beside the whole-model agreement
    t1 = read_table(first["lut"])
    ratios = sorted(table2.value(e2) / t1.value(e1) for k, e1 in t1.entries.items() if e1.spec.op == "conv"
                    for e2 in (table2.entries.get(k),) if e2 is not None and t1.value(e1) > 0)
    entry_ratio = [float(np.percentile(ratios, q)) for q in (10, 50, 90)] if ratios else None
    # each table's stated spread (latency/stated_spread.py) and the plans whose two predictions lie beyond both
    spreads = [stated_spread(t1), stated_spread(table2)]
    beyond = None if None in spreads else [n for n in plans if not agree_within(p1[n], spreads[0], p2[n], spreads[1])]
    return {"stated_spread": spreads, "beyond_stated_spread": beyond, "arch": arch, "precision": precision, "batch": batch, "step_first": read_table(first["lut"]).alignment(), "step_second": table2.alignment(),
            "anchor_reference_ms": refs, "anchor_calibrated_ms": [a.get("calibrated_ms") for a in anchors],
            "max_abs_diff_pct": max(abs(v) for v in diffs.values()), "diff_pct": diffs,
            "max_abs_ratio_diff_pct": max(abs(v) for v in ratio_diffs.values()), "ratio_diff_pct": ratio_diffs,
            "conv_entry_ratio_p10_p50_p90": entry_ratio}


def anchor_ab(precision: str, pairs: int, args: argparse.Namespace, ui: UI) -> dict:
    """`pairs` tables of the demo CNN at 96x96 measured alternately with and without the speed
    anchor's gate (one machine reference shared by the gated ones, as on a machine); how far apart
    each group's whole-model predictions lie (max / min - 1 over its tables, per plan)."""
    model, shape, graph = cell_model("demo96", 1)
    plans = {"full": graph.full_widths(), **ratio_plans(graph, (0.3, 0.6))}
    work = Path(args.workdir) / "anchor-ab"
    work.mkdir(parents=True, exist_ok=True)
    store = work / ANCHOR_STORE
    if store.exists():
        store.unlink()
    predictions: dict[str, list[dict[str, float]]] = {"gated": [], "plain": []}
    for i in range(pairs):
        for group, gated in (("gated", True), ("plain", False)):
            lut = work / f"lut-{precision}-{group}-{i}.json"
            if lut.exists():
                lut.unlink()
            table, _ = measure_table(model, graph, shape, get_target("cpu"), precision, 1, lut, budget_s=args.lut_budget,
                                     options=MeasureOptions(clock=args.clock, anchor=True, speed_gate=gated, anchor_store=store), ui=ui)
            lm = LutLatencyModel(table)
            predictions[group].append({n: predict(lm, graph, w, precision, 1) for n, w in plans.items()})
            ui.log(f"anchor A/B {precision} {group} {i}: " + ", ".join(f"{n} {v:.3f} ms" for n, v in predictions[group][-1].items()))
    spread = {g: {n: 100 * (max(p[n] for p in ps) / min(p[n] for p in ps) - 1) for n in plans} for g, ps in predictions.items()}
    return {"precision": precision, "pairs": pairs, "predictions": predictions, "spread_pct": spread}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _slowdown(cell: dict) -> str:
    """How much slower than its reference the speed anchor ran around the table and at the validation
    (with the gate: the plans timed in a fast window, of all)."""
    slow = cell.get("slowdown") or {}
    text = " / ".join("-" if slow.get(k) is None else f"x{slow[k]:.2f}" for k in ("table", "validation"))
    if cell.get("quiet_plans") is not None:
        text += f" (gate: {cell['quiet_plans']}/{len(cell['rows'])} plans in a fast window)"
    return text


def _step(cell: dict) -> str:
    """The table's step: the isolated probe's (its mode and penalty), or the context's where the
    probe found none or one the deployed graphs did not pay for (with what odd widths measured
    over their aligned-regime price)."""
    if cell.get("context_penalty") is not None:
        return f"{cell['step']} (in context, x{cell['context_penalty']:.2f})"
    return f"{cell['step']} ({cell['mode']}, {cell['penalty']:.2f})"


def _drift(cell: dict) -> str:
    """The full model as the table's context fit measured it and as the validation rounds did."""
    if cell.get("fit_full_ms") is None:
        return "-"
    full = next(r["measured_ms"] for r in cell["rows"] if r["plan"] == "full")
    return f"{cell['fit_full_ms']:.3g} -> {full:.3g} ms ({cell['drift_pct']:+.0f}%)"


def _plan_spreads(cell: dict) -> str:
    """Each plan's own range over the validation's rounds (slowest over fastest round): the floor of
    the plans beside the full model's, wider for FP32 off-grid plans (docs/latency_model.md, "How far
    an off-grid plan's own cost moves")."""
    spreads = [r["round_spread_pct"] for r in cell["rows"] if "round_spread_pct" in r]
    return f"{np.median(spreads):.1f} / {max(spreads):.1f}%" if spreads else "-"


def rank_swaps(rows: list[dict]) -> list[dict]:
    """The random plans the table ranks the other way round from the measurement (what costs a cell
    its Spearman: with five plans one swap reads 0.90), each with how far apart the two measured
    and the wider of their own ranges over the validation's rounds. A swap of two plans measured
    closer than their rounds move cannot be told from the machine's noise by any predictor."""
    held = [r for r in rows if r["plan"] != "full" and not r["plan"].startswith("fit:")]
    swaps = []
    for i, a in enumerate(held):
        for b in held[i + 1:]:
            if (a["lut_ms"] - b["lut_ms"]) * (a["measured_ms"] - b["measured_ms"]) < 0:
                fast, slow = sorted((a, b), key=lambda r: r["measured_ms"])
                swaps.append({"plans": [fast["plan"], slow["plan"]], "measured_gap_pct": 100 * (slow["measured_ms"] / fast["measured_ms"] - 1),
                              "range_pct": max(a.get("round_spread_pct", 0.0), b.get("round_spread_pct", 0.0))})
    return swaps


def _swaps(cell: dict) -> str:
    """The rank swaps (`rank_swaps`): measured gap against the two plans' range over rounds."""
    if "rows" not in cell or any("lut_ms" not in r for r in cell["rows"]):
        return "-"
    swaps = rank_swaps(cell["rows"])
    return "; ".join(f"{s['measured_gap_pct']:.1f}% apart (ranges {s['range_pct']:.0f}%)" for s in swaps) if swaps else "none"


def _fit_moves(cell: dict) -> str:
    """How far the re-timed context-fit plans' speedups moved between the fit and the validation
    (negative: the plan now runs slower against the full model than the fit measured)."""
    moves = cell.get("fit_plans_retimed") or []
    return ", ".join(f"{m['plan']} {m['speedup_move_pct']:+.0f}%" for m in moves) if moves else "-"


def _within(cell: dict) -> str:
    """The table's stated spread and how many of the cell's random plans it covered."""
    if cell.get("stated_spread_pct") is None:
        return "-"
    held = sum(1 for r in cell["rows"] if r["plan"] != "full")
    return f"+-{cell['stated_spread_pct']:.1f}%: {cell['within_stated_spread']} of {held}"


def _spread_text(chk: dict) -> str:
    """The two tables' stated spreads and whether their predictions agree within them."""
    spreads, beyond = chk.get("stated_spread") or [None, None], chk.get("beyond_stated_spread")
    if None in spreads or beyond is None:
        return ""
    verdict = "every plan's two predictions agree within them" if not beyond else f"{len(beyond)} plan(s) apart beyond them ({', '.join(beyond)})"
    return f" Stated spreads {100 * spreads[0]:.1f}% / {100 * spreads[1]:.1f}%: {verdict}."


def write_doc(results: dict, path: Path, section: str = "validation") -> None:
    """Replace the text between `<!-- SECTION:begin -->` and `<!-- SECTION:end -->` in `path`."""
    lines = [
        f"Measured {results['measured_at']} on {results['machine']} ({results['cores']} logical CPUs, shared: load average {results['load_average']} at the start), "
        f"clock **{results['clock']}**, {results['plans']} random plans per cell + the full model, {results['rounds']} interleaved rounds. "
        "Produced by `tools/validate_latency_model.py`.",
        "",
        "| model | input | precision | step (mode, penalty) | table s | LUT MAPE | LUT max | LUT Spearman | stated spread: random plans within it | LUT MAPE of speedups | MACs MAPE (speedups) | MACs Spearman | noise floor (full model, range over rounds) | each plan's own range over rounds (median / max over plans) | machine speed (speed anchor / its reference): table, validation | full model: table fit -> validation | fit's plans re-timed: speedup moved since the fit | plans ranked the other way: measured gap (their range over rounds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if not results["cells"]:  # only the --issue / --anchor-ab checks were run
        lines = [f"Measured {results['measured_at']} on {results['machine']} ({results['cores']} logical CPUs, shared: load average "
                 f"{results['load_average']} at the start), clock **{results['clock']}**. Produced by `tools/validate_latency_model.py`."]
    for c in results["cells"]:
        if "error" in c:
            lines.append(f"| {c['arch']} | | {c['precision']} b{c['batch']} | failed: {c['error'][:80]} | | | | | | | | | | | | | | |")
            continue
        lines.append(
            f"| {c['arch']} | {'x'.join(map(str, c['input']))} | {c['precision']} | {_step(c)} | {c['table_seconds']:.0f} | "
            f"**{c['lut_mape']:.1f}%** | {c['lut_max_err']:.1f}% | **{c['lut_spearman']:.2f}** | {_within(c)} | {_pct(c.get('lut_ratio_mape'))} | {c['macs_mape']:.1f}% | "
            f"{c['macs_spearman']:.2f} | {c['noise_floor_pct']:.1f}% | {_plan_spreads(c)} | {_slowdown(c)} | {_drift(c)} | {_fit_moves(c)} | {_swaps(c)} |"
        )
    for ab in results.get("anchor_ab", []):
        lines.append("")
        lines.append(f"Speed anchor A/B ({ab['precision']}, demo CNN at 96x96, {ab['pairs']} tables with the gate and {ab['pairs']} without, alternately): "
                     "predictions spread (max/min - 1) " + "; ".join(
                         f"{n}: {ab['spread_pct']['gated'][n]:.1f}% gated, {ab['spread_pct']['plain'][n]:.1f}% plain" for n in ab["spread_pct"]["gated"]) + ".")
    for chk in results.get("issue", []):
        if "rows" in chk:
            lines.append("")
            lines.append(f"Issue 13, unaligned `prune --ratio` plans of the demo CNN at 96x96 ({chk['precision']}, batch {chk['batch']}): " + ", ".join(
                f"{r['plan']} predicted {r['lut_ms']:.2f} / measured {r['measured_ms']:.2f} ms ({r['lut_err_pct']:+.1f}%)"
                for r in chk["rows"] if r["plan"].startswith("ratio") or r["plan"] == "full"))
        if "max_abs_diff_pct" in chk:
            lines.append("")
            ratio = chk.get("max_abs_ratio_diff_pct")
            refs = chk.get("anchor_reference_ms") or []
            ref_text = f", anchor reference {refs[0]:.3f} / {refs[1]:.3f} ms" if len(refs) == 2 and all(refs) else ""
            lines.append(f"Issue 13, two tables measured from scratch ({chk['precision']}): whole-model predictions differ by at most {chk['max_abs_diff_pct']:.1f}% "
                         f"over {len(chk['diff_pct'])} plans (steps {chk['step_first']} / {chk['step_second']}{ref_text})"
                         + ("." if ratio is None else f"; their predicted speedups over the full model by at most {ratio:.1f}%.")
                         + _spread_text(chk)
                         + ("" if not chk.get("conv_entry_ratio_p10_p50_p90") else
                            " Isolated conv prices, second table over first: {:.2f} / {:.2f} / {:.2f} (10th / 50th / 90th percentile).".format(*chk["conv_entry_ratio_p10_p50_p90"])))
    begin, finish = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = path.read_text() if path.exists() else ""  # a new --doc file gets the section
    if begin not in text:
        text += f"\n{begin}\n{finish}\n"
    start, end = text.index(begin) + len(begin), text.index(finish)
    path.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + text[end:])


def repredict(results: dict, seed: int, ui: UI) -> list[dict]:
    """Every cell's plans priced again from the table the run saved, with this checkout's predictor:
    how far a change to the predictor moves a recorded run (percent per plan; 0.00 where it does
    not touch these tables). The tables must still be at the paths the run recorded (its --workdir)."""
    moves = []
    for c in results["cells"]:
        if "error" in c:
            continue
        _, _, graph = cell_model(c["arch"], c["batch"])
        table = read_table(Path(c["lut"]))
        lm = LutLatencyModel(table, source=c["lut"], ui=quiet_ui())
        plans = {"full": graph.full_widths(), **draw_plans(graph, results["plans"], c["step"], results.get("seed", seed))}
        pct = {r["plan"]: 100 * (predict(lm, graph, plans[r["plan"]], c["precision"], c["batch"]) / r["lut_ms"] - 1) for r in c["rows"]}
        moves.append({"cell": f"{c['arch']}:{c['precision']}:{c['batch']}", "moved_pct": pct})
        ui.log(f"{moves[-1]['cell']}: " + " ".join(f"{n} {m:+.2f}%" for n, m in pct.items()))
    return moves


def machine_label() -> str:
    """The CPU by model and ISA: steps, INT8 speed and noise differ between the machines here."""
    cpu = cpu_fingerprint()
    return f"{cpu['cpu_model'] or platform.machine()} ({cpu['isa']})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="demo:fp32:1,demo:int8:1,demo:fp32:32,demo:int8:32,grouped:fp32:1,grouped:int8:1,mobilenet_v2:fp32:1,resnet18:fp32:1")
    parser.add_argument("--issue", action="store_true", help="add issue 13's checks (demo CNN at 96x96 ratio plans; a second table)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--plans", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=WHOLE_MODEL_ROUNDS, help="interleaved rounds per plan (default: as the build's latency check and the context fit)")
    parser.add_argument("--runs", type=int, default=WHOLE_MODEL_RUNS, help="runs per round at least (and WHOLE_MODEL_SECONDS of them)")
    parser.add_argument("--lut-budget", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retime-fit", type=int, default=3, metavar="N",
                        help="time N of the table's context-fit plans again beside the random ones (how far the machine moved their speedups since the fit)")
    parser.add_argument("--workdir", default="/tmp/hadmc-latency-validation")
    parser.add_argument("--remeasure", action="store_true")
    parser.add_argument("--speed-gate", action="store_true", help="measure tables and time the plans with the speed anchor's gate (off by default, as in builds)")
    parser.add_argument("--anchor-ab", type=int, default=0, metavar="PAIRS",
                        help="also measure PAIRS demo-CNN tables with and without the speed anchor's gate, alternately, per precision")
    parser.add_argument("--json", help="the results file (default: validation.json in --workdir; the docs' runs name docs/...)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "latency_model.md"))
    parser.add_argument("--section", help="the doc's marked section to replace (validation, validation-wall, ...); without it the doc is left alone")
    parser.add_argument("--render", metavar="JSON", help="only write the doc section from a results JSON of an earlier run")
    parser.add_argument("--repredict", metavar="JSON", help="only price an earlier run's plans again from its saved tables with this checkout's predictor")
    args = parser.parse_args()
    if args.repredict:
        moves = repredict(json.loads(Path(args.repredict).read_text()), args.seed, UI(quiet=False))
        worst = max((abs(m) for c in moves for m in c["moved_pct"].values()), default=0.0)
        print(f"{len(moves)} cells re-predicted; the largest move {worst:.2f}%")
        return 0
    if args.render:
        if not args.section:
            parser.error("--render needs --section: the doc's marked section to replace")
        write_doc(json.loads(Path(args.render).read_text()), Path(args.doc), args.section)
        return 0
    ui = UI(quiet=False)
    torch.set_num_threads(1)
    store = Path(args.workdir) / ANCHOR_STORE
    if args.remeasure and store.exists():  # from scratch: the machine's anchor reference too
        store.unlink()
    results = {"measured_at": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_label(), "cores": os.cpu_count(),
               "load_average": [round(x, 1) for x in os.getloadavg()], "clock": args.clock, "plans": args.plans, "seed": args.seed, "rounds": args.rounds,
               "cells": [], "issue": []}
    start = time.monotonic()
    for cell in filter(None, args.cells.split(",")):  # --cells "": only the --issue checks
        arch, precision, batch = cell.split(":")
        try:
            results["cells"].append(run_cell(arch, precision, int(batch), args, ui))
        except Exception as exc:  # a cell that cannot run is reported, not hidden
            results["cells"].append({"arch": arch, "precision": precision, "batch": int(batch), "error": f"{type(exc).__name__}: {exc}"})
            ui.warn(f"{cell} failed: {exc}")
    if args.issue:
        for precision in ("fp32", "int8"):
            first = run_cell("demo96", precision, 1, args, ui, extra_plans=lambda g: ratio_plans(g, (0.3, 0.6)))
            results["issue"].append(first)
            results["issue"].append(repeatability("demo96", precision, 1, args, ui, first))
    if args.anchor_ab:
        results["anchor_ab"] = [anchor_ab(precision, args.anchor_ab, args, ui) for precision in ("fp32", "int8")]
    results["seconds"] = round(time.monotonic() - start, 1)
    args.json = args.json or str(Path(args.workdir) / "validation.json")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    written = [args.json]
    if args.section:  # a run for the record names its section; a scratch run leaves the doc alone
        write_doc(results, Path(args.doc), args.section)
        written.append(args.doc)
    print(f"done in {results['seconds']:.0f}s; wrote {' and '.join(written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
