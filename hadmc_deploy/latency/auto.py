"""Measure a latency table for this model on this machine, cheaply (the cache around it:
latency/table_cache.py).

`measure_table` is what a build targeting the CPU it runs on measures by default
(through `table_cache.measured_latency_model`, which returns the cached table for
(model graph, machine, backend version, precision, batch, method) instead where
there is one): the staircase probe, a coarse grid
at the measured step (the widths the search can choose), one point just off the
grid per layer, all timed in interleaved passes, then the per-layer context
correction from profiling the deployed full-width and off-grid plans.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.alignment import blocked_layout_width, grid_step, off_grid_specs, probe_staircase
from hadmc_deploy.latency.lut import IDENTITY_KEYS, LatencyTable, LutMeta
from hadmc_deploy.latency.measure import backend_identity, get_backend, specs_for_graph
from hadmc_deploy.latency.repeat import measure_into_table, ort_preparer
from hadmc_deploy.latency.speed_anchor import default_store, machine_anchor
from hadmc_deploy.targets import TargetProfile
from hadmc_deploy.ui import UI, quiet_ui

#: bump when what a cached table means changes: older cached tables are then re-measured (v3: context factor curves over
#: the layer size and the context step; v4: whole-model times as floors, reverted in v5: they predicted ~25% below what
#: the build itself measures; v6: deployed plans timed and profiled with spinning workers, as they deploy; v7: stricter
#: staircase evidence and, where the probe finds no step, the grid on the CPU's blocked width; v8: the probe's points on
#: the grid count as grid points: the swept layer's family had lacked its full-width row; v9: an isolated step the
#: deployed graphs do not pay for is profiled again on the CPU's blocked width; v10: layers priced by their in-context
#: times over their size, grouped convs' regimes per group; v11: an ONNX Runtime probe's step finer than the blocked
#: width and dividing it is profiled at the blocked width, see context_plans.context_step; v12: the context fit's
#: whole-model times over the build's WHOLE_MODEL_ROUNDS rounds, every measurement at least WHOLE_MODEL_SECONDS of runs:
#: hadmc_deploy.timing; v13: graphs with grouped convs profile two crossed plans more, and a grouped conv's regime is
#: priced by its fitted channel form where that predicts better: latency/channel_form.py; v14: a context plan's
#: whole-model time is the expected fastest of WHOLE_MODEL_ROUNDS rounds, estimated from up to three times as many:
#: timing.expected_fastest; v15: profiled kernels pair with their layers by the source names they keep before keys:
#: kernel_pairing.pair_kernels; v18 (v16 and v17 were tried and reverted, see docs/latency_model.md): a third off-grid
#: plan at 0.9 of every width, context_plans.OFFGRID_FRACTIONS); v19: a plain conv's input axis swept too, and where the
#: blocked kernel pads (the output sweep's "pad" shape) a conv whose input is on the input sweep's step is priced in the
#: aligned regime at its padded size: latency/blocking.py); v20 was tried and reverted, see docs/latency_model.md.
METHOD = "measured-v19"


@dataclass
class MeasureOptions:
    """How much to measure: grid points per channel axis, interleaved passes, runs per pass."""

    grid_points: int = 4
    passes: int = 3
    runs_per_pass: int = 4
    context: bool = True
    context_rounds: int = 3
    #: clock "cpu" only: further context rounds while the rounds so far took less than this many
    #: seconds (at most MAX_CONTEXT_ROUNDS in all). On one thread the fastest CPU time is a floor
    #: that repeats; the more rounds reach it, the closer two tables agree: with 20 rounds two tables
    #: of the demo CNN at 96x96 priced its full model 1.3% (FP32) and 6.7% (INT8) apart
    #: (`tools/validate_latency_model.py --cells "" --issue --clock cpu`); a pair at 3 rounds, 10.7%
    #: (FP32), with no measurable cost in table time for a model that small.
    cpu_context_seconds: float = 15.0
    #: clock "wall" only: further whole-model rounds of the context plans while they take under this
    #: many seconds (at most 3 x WHOLE_MODEL_ROUNDS), from which each plan's expected fastest of
    #: WHOLE_MODEL_ROUNDS is estimated (`timing.expected_fastest`): about half as variable as one
    #: fastest of 7 (scratch /tmp/exp16/rounds.py). Seconds a build spends for it.
    context_model_seconds: float = 3.0
    threads: int | None = None
    exporter: str = "deploy"
    #: "wall": deployment threads, wall clock; "cpu": one thread, CPU time (repeatable on a shared machine).
    clock: str = "wall"
    #: calibrate the speed anchor before and after the table (latency/speed_anchor.py) and record the
    #: machine's slowdown against its reference. An instrument for the validation tools, off in builds:
    #: the anchor's slowdown did not track a model's own drift (docs/latency_model.md).
    anchor: bool = False
    #: with `anchor`, also time it beside every measurement and re-time what never ran in a fast
    #: window (the gate); in two A/B runs it did not make tables reliably more repeatable.
    speed_gate: bool = False
    #: the JSON file of the machine's anchor references (None: the user's cache, shared by every table)
    anchor_store: Path | None = None


def graph_signature(graph: DependencyGraph) -> str:
    """sha256 of the layer graph (every layer's spec and groups, every group's width)."""
    data = {
        "layers": [[layer.spec.key(), list(layer.in_groups), layer.out_group] for layer in graph.layers],
        "groups": [[g.id, g.width, g.prunable, g.min_width, g.granularity] for g in graph.groups],
        "input": list(graph.input_shape),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_key(graph: DependencyGraph, target: TargetProfile, precision: str, batch: int, backend_version: str, device: dict[str, Any], clock: str = "wall") -> str:
    """The cache key: model graph, machine identity (CPU model, ISA, cores), backend version, precision, batch."""
    ident = {k: device.get(k) for k in IDENTITY_KEYS if k in device}
    blob = json.dumps([METHOD, graph_signature(graph), target.name, precision, batch, backend_version, ident, clock], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def measure_table(
    model: nn.Module,
    graph: DependencyGraph,
    input_shape: tuple[int, ...],
    target: TargetProfile,
    precision: str,
    batch: int,
    path: Path,
    *,
    budget_s: float | None = None,
    options: MeasureOptions | None = None,
    baseline_onnx: Path | Callable[[], Path | None] | None = None,
    ui: UI | None = None,
) -> tuple[LatencyTable, dict[str, Any]]:
    """Measure (or finish) the table at `path`; returns it with what was done and how long it took.

    `baseline_onnx`: the full model as it deploys, or what exports it when the context fit needs it
    (a build's export stage ships that very file: `build/inputs.baseline_export`)."""
    ui = ui or quiet_ui()
    options = options or MeasureOptions()
    backend = get_backend(target.backend)
    if backend.name != "onnxruntime":
        raise LatencyModelError(f"measuring on this machine needs ONNX Runtime; target {target.name!r} uses {backend.name}", hint="pass --lut with a table measured on the target")
    backend.require()
    version, device = backend_identity(backend)
    start = time.monotonic()
    deadline = None if budget_s is None else start + budget_s
    shape = (batch, *input_shape[1:])
    if path.exists():
        from hadmc_deploy.latency.lut import read_table

        table = read_table(path)
    else:
        table = LatencyTable(LutMeta(
            target=target.name, backend=backend.name, backend_version=version or "unknown", device=device or {},
            threads=1 if options.clock == "cpu" else options.threads or (device or {}).get("threads"), batch=batch, precision=precision,
            alignment=target.alignment(precision),
            method={"statistic": "mom", "passes": options.passes, "runs_per_pass": options.runs_per_pass, "method": METHOD, "clock": options.clock, "spinning": False, "context_spinning": True},
            int8_form=target.int8_form if precision == "int8" else None,
        ))
    info: dict[str, Any] = {"lut": str(path), "phases": {}}
    if table.meta.method.get("clock", "wall") != options.clock:
        raise LatencyModelError(f"{path} was measured with the {table.meta.method.get('clock')} clock, not {options.clock}", hint="use another cache directory or file")
    prepare = ort_preparer(threads=options.threads, int8_form=target.int8_form, clock=options.clock)
    anchor = None
    if options.anchor or options.speed_gate:
        t0 = time.monotonic()
        anchor = machine_anchor(options.anchor_store or default_store(), device or {}, version or "unknown", options.threads, options.clock)
        recorded = table.meta.method.get("anchor")
        if recorded and table.entries:  # a resumed table keeps the scale its entries were measured on
            anchor.reference_ms = float(recorded["reference_ms"])
        table.meta.method["anchor"] = anchor.to_dict()
        info["phases"]["anchor_s"] = round(time.monotonic() - t0, 2)
    gate = anchor if options.speed_gate else None
    t0 = time.monotonic()
    if table.staircase is None:
        staircase, points = probe_staircase(graph, prepare, precision=precision, batch=batch, passes=options.passes + 2, runs_per_pass=options.runs_per_pass, deadline=deadline, anchor=gate)
        for spec, mom, spread in points:
            table.add(spec, mom, mom, options.passes * options.runs_per_pass, mom, mom_ms=mom, spread=spread, role="sweep")
        table.staircase = staircase
        table.save(path)
    info["phases"]["staircase_s"] = round(time.monotonic() - t0, 2)
    step = table.alignment()
    # no step in isolation: the grid (and the off-grid points) sit on the CPU's blocked width, the
    # step the context profiles then; a grid of arbitrary counts would mix both regimes, and two
    # tables whose probes answered "none" and "16" would price from different grids
    step_of_grid = grid_step(table)
    t0 = time.monotonic()
    grid = specs_for_graph(graph, step_of_grid, precision=precision, batch=batch, points=options.grid_points)
    for spec in grid:  # the probe's points on the grid are grid points (timed the same way, so not timed again)
        entry = table.get(spec)
        if entry is not None and entry.role == "sweep":
            entry.role = "grid"
    n_grid, failed = measure_into_table(grid, table, path, prepare, passes=options.passes, runs_per_pass=options.runs_per_pass, deadline=deadline, anchor=gate, ui=ui)
    off = off_grid_specs(graph, step_of_grid, precision=precision, batch=batch)
    n_off, failed2 = measure_into_table(off, table, path, prepare, role="off_grid", passes=options.passes, runs_per_pass=options.runs_per_pass, deadline=deadline, anchor=gate, ui=ui)
    info["phases"]["layers_s"] = round(time.monotonic() - t0, 2)
    refused = {line.split(": ", 1)[0] for line in failed + failed2}  # configurations the backend cannot build
    complete = all(s in table or s.key() in refused for s in grid + off)
    info.update({"step": step, "penalty": table.staircase.penalty, "grid_specs": len(grid), "off_grid_specs": len(off), "measured": n_grid + n_off, "failed": failed + failed2, "complete": complete})
    if complete and options.context and table.context is None:
        from hadmc_deploy.latency.context import context_fit_summary, fit_context
        from hadmc_deploy.latency.stated_spread import stated_spread

        t0 = time.monotonic()
        full_onnx = baseline_onnx() if callable(baseline_onnx) else baseline_onnx
        try:
            fit = functools.partial(fit_context, table, model, graph, shape, backend, rounds=options.context_rounds, threads=options.threads, exporter=options.exporter, baseline_onnx=full_onnx,
                                    clock=options.clock, anchor=gate, more_rounds_seconds=options.cpu_context_seconds if options.clock == "cpu" else 0.0,
                                    model_seconds=options.context_model_seconds, ui=ui)
            fit()
            isolated, block = table.staircase.step, blocked_layout_width(table.meta.device)
            if table.context is not None and isolated > 1 and table.context.step != block and not table.context.step_pays():
                # the deployed graphs do not pay for the isolated probe's step (under v9 an INT8 probe at
                # batch 32 found 4 where odd widths then measured x0.63 of the step-4 price; since v11 a
                # finer step dividing the blocked width is profiled there at once, so this is left for
                # steps that do not divide it or exceed it): profile again on the CPU's blocked width and
                # keep that fit where leaving it costs
                first = table.context
                try:
                    fit(step=block)
                except LatencyModelError as exc:  # the first fit stands
                    ui.warn(f"no context fit at the blocked width {block}: {exc.one_line()}")
                    table.context = first
                info["context_refit"] = {"isolated_step": isolated, "isolated_penalty": first.unaligned_penalty, "blocked_width": block, "penalty": table.context.unaligned_penalty}
                if not table.context.step_pays():
                    table.context = first
                ui.log(f"step {isolated} of the isolated probe not confirmed in context (x{first.unaligned_penalty or 0:.2f}); blocked width {block}: "
                       f"x{info['context_refit']['penalty'] or 0:.2f}, {'kept' if table.context is not first else 'not kept'}")
        except LatencyModelError as exc:
            ui.warn(f"no per-layer context correction: {exc.one_line()}")
            info["context_error"] = exc.one_line()
        if table.context is not None:
            info["context_fit"] = context_fit_summary(table.context.fitted_on)
            info["stated_spread"] = stated_spread(table)
        info["phases"]["context_s"] = round(time.monotonic() - t0, 2)
    table.meta.method["complete"] = complete
    if anchor is not None:
        start_ms = anchor.calibrated_ms or 0.0
        end_ms = anchor.calibrate(0.5)
        table.meta.method["anchor"] = anchor.to_dict()
        slowdown = min(start_ms, end_ms) / anchor.reference_ms if anchor.reference_ms > 0 else 1.0
        table.meta.method["anchor"]["slowdown"] = round(slowdown, 3)
        info["anchor"] = {"reference_ms": anchor.reference_ms, "slowdown": round(slowdown, 3), "quiet_fraction": anchor.quiet_fraction()}
    table.save(path)
    info["seconds"] = round(time.monotonic() - start, 2)
    return table, info
