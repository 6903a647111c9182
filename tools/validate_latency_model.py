"""Validate the LUT latency model end to end: predicted vs measured latency of random width plans.

For each architecture: trace it, measure its LUT on the CPU target (ONNX Runtime,
through the backend's measure_layer; resumable), draw random width plans
(uniform and non-uniform), prune each with the graph's surgery, export it, build
and time it in ONNX Runtime (interleaved rounds, median), fit the LUT's
whole-model correction on three calibration plans (full, 75% and 50% uniform)
that are NOT among the validation plans, and compare on the validation plans:

  * LUT model (measured table + step-aware interpolation + correction)
  * MACs-proportional predictor (ms = k * MACs, k fitted on the same three plans)
  * analytic roofline (uncalibrated; rank correlation only is meaningful)

Writes docs/latency_model.md's results table (between markers), docs/latency_validation.png
and docs/latency_validation.json.

    .venv/bin/python tools/validate_latency_model.py                       # resnet18, mobilenet_v2, demo at batch 1
    .venv/bin/python tools/validate_latency_model.py --archs resnet18 --batch 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency import AnalyticLatencyModel, LutLatencyModel, fit_correction, predict_graph  # noqa: E402
from hadmc_deploy.latency.lut import Correction, read_table  # noqa: E402
from hadmc_deploy.latency.measure import (  # noqa: E402
    backend_timer,
    cpu_time_timer,
    get_backend,
    measure_specs,
    open_table,
    specs_for_graph,
)
from hadmc_deploy.latency.whole_model import time_plans  # noqa: E402
from hadmc_deploy.targets import get_target  # noqa: E402
from hadmc_deploy.ui import UI  # noqa: E402

ARCHS = {
    "resnet18": ("hadmc_deploy.models.resnet", "resnet18", (3, 224, 224)),
    "mobilenet_v2": ("hadmc_deploy.models.mobilenet", "mobilenet_v2", (3, 224, 224)),
    "resnet50": ("hadmc_deploy.models.resnet", "resnet50", (3, 224, 224)),
    "demo": ("hadmc_deploy.models.demo", "demo_cnn", (1, 28, 28)),
}
DOC_BEGIN, DOC_END = "<!-- validation:begin -->", "<!-- validation:end -->"


def build_model(arch: str) -> torch.nn.Module:
    import importlib

    module, fn, _ = ARCHS[arch]
    torch.manual_seed(0)
    return getattr(importlib.import_module(module), fn)().eval()


def aligned(width: int, ratio: float, align: int, floor: int) -> int:
    keep = max(floor, int(round(width * ratio / align)) * align)
    return min(width, max(keep, align if width >= align else width))


def draw_plans(graph, n: int, align: int, seed: int) -> dict[str, dict[str, int]]:
    """Half uniform ratios, half independent per-group ratios, all aligned to the target."""
    rng = np.random.default_rng(seed)
    groups = graph.prunable_groups
    plans: dict[str, dict[str, int]] = {}
    for i in range(n):
        if i % 2 == 0:
            r = rng.uniform(0.3, 1.0)
            plans[f"uniform{i:02d}"] = {g.id: aligned(g.width, r, align, g.min_width) for g in groups}
        else:
            plans[f"mixed{i:02d}"] = {g.id: aligned(g.width, rng.uniform(0.25, 1.0), align, g.min_width) for g in groups}
    return plans


def calibration_plans(graph, align: int) -> dict[str, dict[str, int]]:
    groups = graph.prunable_groups
    return {f"calib{int(r * 100)}": {g.id: aligned(g.width, r, align, g.min_width) for g in groups} for r in (1.0, 0.75, 0.5)}


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def stats(pred: list[float], meas: list[float]) -> dict[str, float]:
    err = [abs(p - m) / m * 100 for p, m in zip(pred, meas, strict=True)]
    return {"mape_pct": float(np.mean(err)), "max_err_pct": float(np.max(err)), "spearman": spearman(pred, meas)}


def validate_arch(arch: str, batch: int, args: argparse.Namespace, ui: UI) -> dict:
    target = get_target("cpu")
    backend = get_backend(target.backend)
    align = target.alignment("fp32")
    model = build_model(arch)
    shape = (batch, *ARCHS[arch][2])
    graph = trace(model, shape)
    work = Path(args.workdir) / f"{arch}_b{batch}_{args.clock}"
    work.mkdir(parents=True, exist_ok=True)

    # 1. the LUT (resumable: rerunning continues where an interrupted run stopped)
    lut_path = work / "lut.json"
    table = open_table(lut_path, target, backend, precision="fp32", batch=batch, warmup=args.lut_warmup, runs=args.lut_runs, statistic=args.statistic, ui=ui)
    specs = specs_for_graph(graph, align, precision="fp32", batch=batch, grid_step=args.grid_step)
    t0 = time.monotonic()
    timer = cpu_time_timer(args.lut_warmup, args.lut_runs) if args.clock == "cpu" else backend_timer(backend, args.lut_warmup, args.lut_runs)
    table.meta.method["clock"] = args.clock
    table.meta.method["statistic"] = args.statistic  # both are stored per entry; layers and models use the same
    if args.clock == "cpu":
        table.meta.threads = 1
    report = measure_specs(specs, table, lut_path, timer, ui=ui)
    lut_seconds = time.monotonic() - t0
    ui.log(f"{arch}: LUT {len(table)} entries ({report.measured} measured now in {lut_seconds:.0f}s, {report.cached} cached)")

    # 2. whole-model timings of calibration + validation plans, interleaved (cached per arch)
    plans = {**calibration_plans(graph, align), **draw_plans(graph, args.plans, align, seed=args.seed)}
    timings_path = work / "timings.json"
    if timings_path.exists() and not args.remeasure:
        timed = json.loads(timings_path.read_text())
    else:
        t0 = time.monotonic()
        timed_list = time_plans(model, graph, plans, shape, backend, workdir=work / "onnx", rounds=args.rounds, runs=args.runs, exporter="fast", clock=args.clock, ui=ui)
        timed = {
            "seconds": time.monotonic() - t0,
            "measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "plans": {t.name: t.to_dict() for t in timed_list},
        }
        timings_path.write_text(json.dumps(timed, indent=1))
    key = "min_ms" if args.statistic == "min" else "median_ms"
    measured = {name: t[key] for name, t in timed["plans"].items()}

    # 3. correction fitted on the calibration plans only, stored in the LUT
    table = read_table(lut_path)
    table.meta.method["statistic"] = args.statistic
    table.correction = None
    raw = LutLatencyModel(table, AnalyticLatencyModel(target), source=str(lut_path), ui=ui)
    calib = [n for n in plans if n.startswith("calib")]
    sums = [predict_graph(raw, graph, plans[n]).total_ms for n in calib]
    scale, offset = fit_correction(sums, [measured[n] for n in calib])
    table.correction = Correction(scale, offset, [{"plan": n, "layer_sum_ms": s, "measured_ms": measured[n]} for n, s in zip(calib, sums, strict=True)])
    table.save(lut_path)
    lut = LutLatencyModel(table, AnalyticLatencyModel(target), source=str(lut_path), ui=ui)
    analytic = AnalyticLatencyModel(target)

    def macs(widths: dict[str, int]) -> int:
        return sum(s.macs() for s in graph.layer_specs(widths))

    k = float(np.mean([measured[n] / macs(plans[n]) for n in calib]))
    val = [n for n in plans if not n.startswith("calib")]
    rows = []
    for n in val:
        pred = predict_graph(lut, graph, plans[n])
        rows.append(
            {
                "plan": n,
                "measured_ms": measured[n],
                "lut_ms": pred.total_ms,
                "lut_source": pred.source,
                "uncorrected_ms": sum(pred.per_layer_ms) / scale,
                "macs_ms": k * macs(plans[n]),
                "analytic_ms": predict_graph(analytic, graph, plans[n]).total_ms,
                "macs": macs(plans[n]),
            }
        )
    meas = [r["measured_ms"] for r in rows]
    return {
        "arch": arch,
        "batch": batch,
        "statistic": args.statistic,
        "clock": args.clock,
        "input_shape": list(shape),
        "lut_entries": len(table),
        "lut_seconds_this_run": round(lut_seconds, 1),
        "whole_model_seconds": round(timed.get("seconds", 0.0), 1),
        "timings_measured_at": timed.get("measured_at", "an earlier run of this command (time not recorded)"),
        "timings_load_average": timed.get("load_average"),
        "correction": {"scale": scale, "offset_ms": offset},
        "lut": stats([r["lut_ms"] for r in rows], meas),
        "lut_uncorrected": stats([r["uncorrected_ms"] for r in rows], meas),
        "macs": stats([r["macs_ms"] for r in rows], meas),
        "analytic_spearman": spearman([r["analytic_ms"] for r in rows], meas),
        "measured_range_ms": [min(meas), max(meas)],
        "rows": rows,
    }


def scatter(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = min(3, len(results))
    nrows = -(-len(results) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    for ax, res in zip(axes.flat, results, strict=False):
        meas = [r["measured_ms"] for r in res["rows"]]
        ax.scatter(meas, [r["lut_ms"] for r in res["rows"]], label=f"LUT (MAPE {res['lut']['mape_pct']:.1f}%)", s=22)
        ax.scatter(meas, [r["macs_ms"] for r in res["rows"]], label=f"MACs (MAPE {res['macs']['mape_pct']:.1f}%)", marker="x", s=22)
        lo, hi = min(meas) * 0.85, max(meas) * 1.15
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{res['arch']} b{res['batch']} ({res.get('clock', 'wall')} clock, {res.get('statistic', 'median')})")
        ax.set_xlabel("measured ms (ONNX Runtime)")
        ax.set_ylabel("predicted ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table_md(results: list[dict]) -> str:
    lines = [
        "| model | batch | clock, statistic | LUT entries | measured range (ms) | LUT MAPE | LUT max err | LUT Spearman | MACs MAPE | MACs max err | MACs Spearman | analytic Spearman | LUT without correction MAPE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r.get('clock', 'wall')}, {r.get('statistic', 'median')} | {r['lut_entries']} | {r['measured_range_ms'][0]:.2f}-{r['measured_range_ms'][1]:.2f} "
            f"| **{r['lut']['mape_pct']:.1f}%** | {r['lut']['max_err_pct']:.1f}% | **{r['lut']['spearman']:.3f}** "
            f"| {r['macs']['mape_pct']:.1f}% | {r['macs']['max_err_pct']:.1f}% | {r['macs']['spearman']:.3f} "
            f"| {r['analytic_spearman']:.3f} | {r['lut_uncorrected']['mape_pct']:.1f}% |"
        )
    return "\n".join(lines)


def write_outputs(results: list[dict], docs: Path) -> None:
    """docs/latency_validation.json (every run's rows), the scatter PNG, and the table in the doc."""
    results = sorted(results, key=lambda r: (r.get("clock", "wall") != "cpu", r["batch"], r["arch"]))
    env = {"cpu": get_backend("onnxruntime").describe_device(), "python": platform.python_version(), "torch": torch.__version__}
    (docs / "latency_validation.json").write_text(json.dumps({"environment": env, "results": results}, indent=1, default=str))
    scatter(results, docs / "latency_validation.png")
    doc = docs / "latency_model.md"
    if doc.exists() and DOC_BEGIN in doc.read_text():
        head, rest = doc.read_text().split(DOC_BEGIN, 1)
        tail = rest.split(DOC_END, 1)[1]
        runs = "\n".join(
            f"- {r['arch']} batch {r['batch']} ({r.get('clock', 'wall')} clock): `{r.get('command', '?')}`, written {r.get('date', '?')}; "
            f"whole models timed {r.get('timings_measured_at', '?')}"
            + (f" at load average {r['timings_load_average']}" if r.get("timings_load_average") else "")
            for r in results
        )
        doc.write_text(head + DOC_BEGIN + "\n" + table_md(results) + "\n\nWritten by:\n\n" + runs + "\n" + DOC_END + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="resnet18,mobilenet_v2,demo")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--plans", type=int, default=20, help="validation plans per model (default 20)")
    parser.add_argument("--grid-step", type=int, default=None, help="LUT grid step (default: about 8 points per group)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per plan (default 5)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per round (default 20)")
    parser.add_argument("--lut-warmup", type=int, default=5)
    parser.add_argument("--lut-runs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--statistic", choices=("median", "min"), default="median", help="median (default) or fastest run, for layers and whole models alike")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: backend timing with the deployment threads; cpu: single-thread CPU time (for a shared, overloaded machine)",
    )
    parser.add_argument("--workdir", default=str(ROOT / "build" / "latency_validation"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--remeasure", action="store_true", help="re-time the whole models even if timings are cached")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ui = UI()
    results = []
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    json_path = docs / "latency_validation.json"
    previous = json.loads(json_path.read_text())["results"] if json_path.exists() else []
    command = "python tools/validate_latency_model.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for arch in args.archs.split(","):
        res = validate_arch(arch, args.batch, args, ui)
        res["command"], res["date"], res["load_average"] = command, time.strftime("%Y-%m-%d %H:%M"), [round(x, 1) for x in os.getloadavg()]
        ui.out.print(f"{arch} b{args.batch}: LUT MAPE {res['lut']['mape_pct']:.2f}% max {res['lut']['max_err_pct']:.1f}% rho {res['lut']['spearman']:.3f} | MACs MAPE {res['macs']['mape_pct']:.2f}% rho {res['macs']['spearman']:.3f}")
        # keep results of other (arch, batch, clock) runs from earlier, replace this one; write after each model
        same = (res["arch"], res["batch"], res["clock"])
        previous = [r for r in previous if (r["arch"], r["batch"], r.get("clock", "wall")) != same] + [res]
        results.append(res)
        write_outputs(previous, docs)
    ui.out.print(table_md(results))
    ok = all(math.isfinite(r["lut"]["mape_pct"]) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
