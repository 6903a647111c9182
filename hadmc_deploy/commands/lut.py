"""`hadmc-deploy lut`: measure a latency lookup table for a model's layers on a target's backend."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hadmc_deploy.commands.common import add_model_argument, input_shape_for, load_from_args
from hadmc_deploy.errors import UsageError
from hadmc_deploy.targets import get_target
from hadmc_deploy.ui import UI

HELP = "measure a latency lookup table (LUT) for a model's layers on a target's backend"
DESCRIPTION = """On ONNX Runtime (--target cpu) the table is measured the way docs/latency_model.md
describes: the channel staircase is probed (unit-step sweep of one layer per op kind), a grid at the
measured step plus one point just off the grid per layer is timed in interleaved passes (min of
per-pass medians, spread recorded), and per-layer factors are fitted by profiling the deployed graph
of the full model and of an off-grid plan with ONNX Runtime's profiler. --legacy-grid (and other
backends) measure as before:

Measure, for every prunable layer of MODEL, its latency over a grid of (in, out) channel
counts at the target's alignment step (plus the cheap ops: pooling, add, concat), each as a tiny
ONNX graph timed by the target's backend exactly as deployment runs it (ONNX Runtime session options
on the CPU; TensorRT on a GPU host; INT8 layers in the target's QDQ form). The table is flushed to
-o every few entries: Ctrl-C keeps what was measured, and rerunning the same command resumes and
measures only what is missing (a complete table measures nothing). For fp32/fp16 tables it then
times the whole model at three widths (100%, 75%, 50%) and fits the table's correction
(measured = scale * layer sum + offset).

On a CPU shared with other jobs, wall-clock timings are mostly scheduling; --clock cpu measures
single-thread CPU time instead (ONNX Runtime only; see docs/latency_model.md).

examples:
  hadmc-deploy lut --arch hadmc_deploy.models.demo:demo_cnn --input-shape 1,1,28,28 --target cpu --precision fp32 -o demo_lut.json
  hadmc-deploy lut model.pth --arch models.py:resnet18 --target cpu --precision fp32 --budget-minutes 10 -o r18_lut.json
  hadmc-deploy lut model.pth --arch models.py:resnet18 --target t4 -o t4_lut.json          # on the GPU host"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    parser.add_argument("--target", default="cpu", help="target profile (default cpu; see `hadmc-deploy targets`)")
    parser.add_argument("-o", "--output", required=True, metavar="LUT.json", help="table file to write (extended if it exists)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="precision to measure (default: the target's default)")
    parser.add_argument("--batch", type=int, help="batch size (default: N of --input-shape)")
    parser.add_argument("--grid-step", type=int, metavar="N", help="channel step of the grid (default: about 8 points per group, multiples of the alignment)")
    parser.add_argument("--budget-minutes", type=float, metavar="M", help="stop measuring after M minutes (rerun to continue)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per layer (default 10)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per layer (default 30); median, p90 and fastest are stored")
    parser.add_argument(
        "--statistic",
        choices=("median", "min"),
        default="median",
        help="what predictions use: the median of the timed runs (default) or the fastest run",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: the backend's timing with the deployment threads (default); cpu: single-thread CPU time in "
        "ONNX Runtime, for a CPU shared with other jobs where wall-clock timings are mostly scheduling",
    )
    parser.add_argument("--no-correction", action="store_true", help="skip timing the whole model to fit the correction")
    parser.add_argument("--grid-points", type=int, default=4, metavar="N", help="grid points per channel axis at the measured step (default 4; ONNX Runtime)")
    parser.add_argument("--passes", type=int, default=3, help="interleaved timing passes per layer (default 3; ONNX Runtime)")
    parser.add_argument("--legacy-grid", action="store_true", help="ONNX Runtime: measure the old way (assumed alignment, no probe, no profiling)")
    parser.add_argument("--force", action="store_true", help="extend a table measured on another device or backend version anyway")


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.latency.measure import (
        backend_timer,
        cpu_time_timer,
        get_backend,
        measure_specs,
        open_table,
        specs_for_graph,
    )

    if args.runs < 1 or args.warmup < 0:
        raise UsageError(f"--runs must be >= 1 and --warmup >= 0 (got {args.runs}, {args.warmup})")
    if args.grid_step is not None and args.grid_step < 1:
        raise UsageError(f"--grid-step must be positive, got {args.grid_step}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise UsageError(f"--budget-minutes must be positive, got {args.budget_minutes}")
    target = get_target(args.target, args.targets_file)
    precision = args.precision or target.default_precision
    if precision not in target.precisions:
        raise UsageError(f"target {target.name!r} does not run {precision}", hint=f"use --precision {' or '.join(target.precisions)}")
    backend = get_backend(target.backend)
    backend.require()
    loaded = load_from_args(args)
    shape = input_shape_for(args, loaded)
    batch = args.batch or shape[0]
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    shape = (batch, *shape[1:])
    graph = trace(loaded.model, shape, ui=ui)
    align = target.alignment(precision)
    out = Path(args.output)
    if backend.name == "onnxruntime" and not args.legacy_grid:
        return _run_measured(args, loaded, graph, shape, target, precision, batch, out, ui)
    table = open_table(out, target, backend, precision=precision, batch=batch, warmup=args.warmup, runs=args.runs, statistic=args.statistic, force=args.force, ui=ui)
    if args.clock == "cpu":
        if backend.name != "onnxruntime":
            raise UsageError("--clock cpu measures with ONNX Runtime on this CPU", hint=f"target {target.name!r} uses {backend.name}: use --clock wall")
        if table.entries and table.meta.method.get("clock", "wall") != "cpu":
            raise UsageError(f"{out} was measured with the wall clock", hint="write the cpu-clock table to another file with -o")
        table.meta.method["clock"], table.meta.threads = "cpu", 1
        timer = cpu_time_timer(args.warmup, args.runs, target.int8_form)
    else:
        if table.meta.method.get("clock", "wall") != "wall":
            raise UsageError(f"{out} was measured with --clock cpu", hint="pass --clock cpu to extend it, or write to another file")
        timer = backend_timer(backend, args.warmup, args.runs)
    specs = specs_for_graph(graph, align, precision=precision, batch=batch, grid_step=args.grid_step)
    ui.log(f"{len(specs)} layer configurations for {loaded.source} on {target.name} ({backend.name}, {precision}, batch {batch}, alignment {align})")
    report = measure_specs(specs, table, out, timer, budget_minutes=args.budget_minutes, ui=ui)
    result: dict[str, Any] = {"lut": str(out), "target": target.name, "backend": backend.name, "precision": precision, "batch": batch, "entries": len(table), **report.to_dict()}
    complete = not report.stopped_by_budget and not report.failed
    if args.no_correction:
        result["correction"] = None
    elif not complete:
        result["correction"] = None
        ui.warn("the table is incomplete: the whole-model correction is fitted once every layer is measured (rerun the command)")
    elif table.correction is not None and report.measured == 0:
        result["correction"] = table.correction.to_dict()  # cached table, correction already fitted
    else:
        from hadmc_deploy.latency.whole_model import fit_table_correction

        result["correction"] = fit_table_correction(loaded.model, graph, shape, table, out, backend, align, ui)
    if backend.name == "tensorrt" and complete and not args.no_correction:
        result["context"] = _fit_tensorrt_context(loaded.model, graph, shape, table, out, backend, ui)
    ui.out.print(
        f"{out}: {len(table)} entries ({report.measured} measured now, {report.cached} already there"
        f"{', stopped by --budget-minutes' if report.stopped_by_budget else ''}) in {report.seconds:.0f}s"
    )
    return result


def _fit_tensorrt_context(model: Any, graph: Any, shape: tuple[int, ...], table: Any, out: Path, backend: Any, ui: UI) -> dict[str, Any] | None:
    """Per-layer factors in context from TensorRT's profiler on the deployed engines (on the GPU
    host; `latency/context_probe.py`); the whole-model correction stays when it cannot be fitted."""
    from hadmc_deploy.errors import LatencyModelError
    from hadmc_deploy.latency.context import fit_context

    if table.context is not None:
        return {"fitted_on": table.context.fitted_on, "cached": True}
    try:
        ctx = fit_context(table, model, graph, shape, backend, ui=ui)
    except LatencyModelError as exc:
        ui.warn(f"no per-layer context correction: {exc.one_line()}")
        return {"error": exc.one_line()}
    table.save(out)
    return {"fitted_on": ctx.fitted_on}


def _run_measured(args: argparse.Namespace, loaded: Any, graph: Any, shape: tuple[int, ...], target: Any, precision: str, batch: int, out: Path, ui: UI) -> dict[str, Any]:
    """The probe + interleaved grid + profiled context path (hadmc_deploy.latency.auto)."""
    from hadmc_deploy.errors import LatencyModelError
    from hadmc_deploy.latency.auto import MeasureOptions, measure_table
    from hadmc_deploy.latency.lut import read_table
    from hadmc_deploy.latency.stated_spread import STEADY_SPREAD, measurement_spread, stated_spread

    if args.passes < 1 or args.grid_points < 1:
        raise UsageError(f"--passes and --grid-points must be >= 1 (got {args.passes}, {args.grid_points})")
    before = len(read_table(out)) if out.exists() else 0
    if out.exists():
        table = read_table(out)
        if table.meta.precision != precision or table.meta.batch != batch:
            raise LatencyModelError(f"{out} holds a {table.meta.precision} batch-{table.meta.batch} table, not {precision} batch-{batch}", hint="write it to another file with -o")
        if table.meta.method.get("clock", "wall") != args.clock:
            raise UsageError(f"{out} was measured with the {table.meta.method.get('clock', 'wall')} clock", hint="write it to another file with -o")
    options = MeasureOptions(
        grid_points=args.grid_points, passes=args.passes, runs_per_pass=max(1, args.runs // args.passes),
        context=not args.no_correction, clock=args.clock,
    )
    budget = None if args.budget_minutes is None else 60.0 * args.budget_minutes
    table, info = measure_table(loaded.model, graph, shape, target, precision, batch, out, budget_s=budget, options=options, ui=ui)
    result: dict[str, Any] = {
        "lut": str(out), "target": target.name, "backend": "onnxruntime", "precision": precision, "batch": batch,
        "entries": len(table), "requested": len(table) if info["complete"] else info["grid_specs"] + info["off_grid_specs"], "measured": len(table) - before,
        "cached": before, "stopped_by_budget": not info["complete"], "staircase": table.staircase.to_dict() if table.staircase else None,
        "context": None if table.context is None else table.context.fitted_on, "phases": info["phases"], "seconds": info["seconds"],
        "stated_spread": stated_spread(table),
    }
    spread = result["stated_spread"]
    ui.out.print(
        f"{out}: {len(table)} entries ({result['measured']} measured now) in {info['seconds']:.0f}s; "
        f"staircase step {table.alignment()} (penalty {table.staircase.penalty:.2f}, {table.staircase.mode})"
        + ("" if spread is None else f"; whole-model predictions +-{100 * spread:.1f}% (its stated spread)")
        + ("" if info["complete"] else "; stopped by --budget-minutes: rerun to continue")
    )
    measured_spread = result["measurement_spread"] = measurement_spread(table)
    if measured_spread is not None and measured_spread > STEADY_SPREAD:
        ui.warn(f"{out}: the plans it timed moved by +-{100 * measured_spread:.1f}% between rounds (or their profiles and whole-model times "
                f"disagreed): the machine was likely busy; delete it and measure again when the machine is quiet for tighter predictions")
    return result
