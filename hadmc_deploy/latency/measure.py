"""Measuring a LUT: which layer specs to time, and timing them through the target's backend.

The grid: for every costed layer of a model, its (in, out) channel counts on a
grid of multiples of the target's alignment (coarser for wide layers, so a table
stays minutes, not hours), plus the layer as it is. Points already in the table
are skipped, so a second run measures nothing and an interrupted run resumes.
The table is flushed atomically every few entries and on any exit (Ctrl-C
included), so what was measured is kept and the file is never half-written.

Timing goes through `Backend.measure_layer`, so the same code measures a CPU
table with ONNX Runtime here and a T4 table with TensorRT on a GPU host.

Long because the resumable, budgeted table measurement (grid, resume, budget, failures) is one
loop with its bookkeeping.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.types import CostedLayer, DependencyGraph
from hadmc_deploy.latency.lut import LatencyTable, LutMeta, check_compatible, cpu_fingerprint, read_table
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import TargetProfile
from hadmc_deploy.ui import UI, quiet_ui

#: a timer prices one spec: returns an object with p50_ms, p90_ms and runs (backends' LatencyStats).
Timer = Callable[[LayerSpec], Any]


def backend_identity(backend: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(version, device fingerprint) of a backend, or None for what cannot be known on this machine."""
    ok, version = backend.available()
    if not ok:
        return None, None
    try:
        device = dict(backend.describe_device())
    except NotImplementedError:  # a plugin without a fingerprint: the host CPU is the best we know
        device = cpu_fingerprint()
    return str(version), device


# -- the grid ---------------------------------------------------------------------
def auto_grid_step(width: int, align: int, points: int = 8) -> int:
    """About `points` grid values up to `width`, each a multiple of the alignment."""
    return max(align, int(math.ceil(width / points / align)) * align)


def grid_values(width: int, align: int, step: int | None = None, floor: int = 1, points: int = 8) -> list[int]:
    """Channel counts to measure for a group of `width`: multiples of `step` (itself a multiple
    of `align`; default about `points` of them), the smallest aligned count >= `floor`, and `width` itself."""
    step = step or auto_grid_step(width, align, points)
    if step % align:
        step = int(math.ceil(step / align)) * align
    lowest = max(align, int(math.ceil(floor / align)) * align)
    values = {width, min(lowest, width)}
    values.update(range(step, width + 1, step))
    return sorted(v for v in values if v >= min(lowest, width))


def _layer_axes(layer: CostedLayer, graph: DependencyGraph) -> tuple[list[str], str | None]:
    prunable = {g.id for g in graph.groups if g.prunable}
    ins = [g for g in layer.in_groups if g in prunable]
    out = layer.out_group if layer.out_group in prunable else None
    return ins, out


def specs_for_graph(
    graph: DependencyGraph,
    align: int,
    *,
    precision: str = "fp32",
    batch: int | None = None,
    grid_step: int | None = None,
    points: int = 8,
) -> list[LayerSpec]:
    """Every spec of the measurement grid for `graph`, unpruned layers first, no duplicates."""
    groups = {g.id: g for g in graph.groups}
    full = graph.full_widths()
    seen: dict[str, LayerSpec] = {}

    def add(spec: LayerSpec) -> None:
        spec = replace(spec, precision=precision, batch=batch or spec.batch)
        seen.setdefault(spec.key(), spec)

    for layer in graph.layers:  # the model as it is: the points every plan is priced against
        add(layer.spec_at(full))
    rest: list[LayerSpec] = []
    for layer in graph.layers:
        ins, out = _layer_axes(layer, graph)
        if not ins and out is None:
            continue
        widths: list[dict[str, int]] = []
        if ins and (out is None or layer.spec.op in ("dwconv",) or (len(ins) == 1 and ins[0] == out)):
            # One free axis (depthwise, elementwise, pooling: in == out, or out fixed).
            g = groups[ins[0]]
            widths = [{ins[0]: v, **({out: v} if out else {})} for v in grid_values(g.width, align, grid_step, g.min_width, points)]
            if len(ins) > 1:  # concat feeding a layer: scale every input group together
                widths = [{i: max(1, round(full[i] * w[ins[0]] / full[ins[0]])) for i in ins} for w in widths]
        elif ins:
            gi, go = groups[ins[0]], groups[out]  # type: ignore[index]
            for vi in grid_values(gi.width, align, grid_step, gi.min_width, points):
                for vo in grid_values(go.width, align, grid_step, go.min_width, points):
                    w = {i: max(1, round(full[i] * vi / full[ins[0]])) for i in ins}
                    widths.append({**w, out: vo})  # type: ignore[dict-item]
        else:
            go = groups[out]  # type: ignore[index]
            widths = [{out: v} for v in grid_values(go.width, align, grid_step, go.min_width, points)]  # type: ignore[dict-item]
        rest += [replace(layer.spec_at({**full, **w}), precision=precision, batch=batch or layer.spec.batch) for w in widths]
    # A deterministic shuffle: a budget-limited run still covers every layer's range
    # coarsely, and the machine's load drifts over the whole table instead of biasing one layer.
    random.Random(0).shuffle(rest)
    for spec in rest:
        add(spec)
    return list(seen.values())


def specs_for_plans(graph: DependencyGraph, plans: Iterable[dict[str, int]], *, precision: str = "fp32", batch: int | None = None) -> list[LayerSpec]:
    """Exactly the specs the given width plans need (no grid): the cheapest table for known plans."""
    seen: dict[str, LayerSpec] = {}
    for widths in plans:
        for spec in graph.layer_specs(widths):
            spec = replace(spec, precision=precision, batch=batch or spec.batch)
            seen.setdefault(spec.key(), spec)
    return list(seen.values())


# -- the table file -------------------------------------------------------------------
def open_table(
    path: str | Path,
    target: TargetProfile,
    backend: Any,
    *,
    precision: str,
    batch: int,
    warmup: int,
    runs: int,
    statistic: str = "median",
    force: bool = False,
    ui: UI | None = None,
) -> LatencyTable:
    """The table at `path` to extend (resume / cache), or a new empty one for this device."""
    ui = ui or quiet_ui()
    version, device = backend_identity(backend)
    path = Path(path)
    if path.exists():
        table = read_table(path)
        if table.entries:
            check_compatible(table, str(path), target=target.name, backend=backend.name, backend_version=version, device=device, force=force, ui=ui)
        if table.meta.precision != precision or table.meta.batch != batch:
            raise LatencyModelError(
                f"{path} holds a {table.meta.precision} batch-{table.meta.batch} table, not {precision} batch-{batch}",
                hint="write it to another file with -o",
            )
        ui.log(f"resuming {path}: {len(table)} entries already measured")
        return table
    meta = LutMeta(
        target=target.name,
        backend=backend.name,
        backend_version=version or "unknown",
        device=device or {},
        threads=(device or {}).get("threads"),
        batch=batch,
        precision=precision,
        alignment=target.alignment(precision),
        method={"warmup": warmup, "runs": runs, "statistic": statistic},
        int8_form=target.int8_form if precision == "int8" else None,
    )
    return LatencyTable(meta=meta)


@dataclass
class MeasureReport:
    requested: int
    measured: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)
    stopped_by_budget: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "measured": self.measured,
            "cached": self.cached,
            "failed": self.failed,
            "stopped_by_budget": self.stopped_by_budget,
            "seconds": round(self.seconds, 2),
        }


def measure_specs(
    specs: list[LayerSpec],
    table: LatencyTable,
    path: str | Path,
    timer: Timer,
    *,
    budget_minutes: float | None = None,
    flush_every: int = 5,
    ui: UI | None = None,
) -> MeasureReport:
    """Time every spec missing from `table` with `timer`, saving to `path` as it goes.

    The file is rewritten atomically every `flush_every` new entries and once more
    on the way out, whatever the way out is (budget, error, Ctrl-C).
    """
    ui = ui or quiet_ui()
    todo = [s for s in specs if s not in table]
    report = MeasureReport(requested=len(specs), cached=len(specs) - len(todo))
    start = time.monotonic()
    deadline = None if budget_minutes is None else start + 60.0 * budget_minutes
    unsaved = 0
    try:
        with ui.progress("measuring layers", len(todo)) as bar:
            for spec in todo:
                if deadline is not None and time.monotonic() > deadline:
                    report.stopped_by_budget = True
                    break
                bar.update(info=f"{spec.op} {spec.in_channels}->{spec.out_channels} @{spec.in_hw[0]}x{spec.in_hw[1]}")
                try:
                    stats = timer(spec)
                except LatencyModelError as exc:  # a layer this backend cannot build: priced analytically later
                    report.failed.append(f"{spec.key()}: {exc.one_line()}")
                    bar.advance()
                    continue
                table.add(spec, stats.p50_ms, stats.p90_ms, stats.runs, min_ms=getattr(stats, "min_ms", None))
                report.measured += 1
                unsaved += 1
                if unsaved >= flush_every:
                    table.save(path)
                    unsaved = 0
                bar.advance()
    finally:
        if unsaved or not Path(path).exists():
            table.save(path)
        report.seconds = time.monotonic() - start
    if report.stopped_by_budget:
        ui.warn(
            f"--budget-minutes {budget_minutes} reached: measured {report.measured} of {len(todo)} new points "
            f"({len(table)} in {path}); run the same command again to continue where it stopped"
        )
    for line in report.failed[:5]:
        ui.warn(f"could not measure {line}")
    return report


def get_backend(name: str) -> Any:
    """The registered backend plugin `name` (imported lazily by the registry)."""
    from hadmc_deploy import backends

    return backends.get(name)


def backend_timer(backend: Any, warmup: int, runs: int) -> Timer:
    """Time specs through `backend.measure_layer` (the deployment session options)."""
    backend.require()

    def timer(spec: LayerSpec) -> Any:
        return backend.measure_layer(spec, warmup=warmup, runs=runs)

    return timer


#: clocks a table can be measured with: "wall" through the backend with its deployment
#: threads (the default), or "cpu": single-thread CPU time in ONNX Runtime.
CLOCKS = ("wall", "cpu")


def cpu_time_stats(session: Any, feeds: dict[str, Any], warmup: int, runs: int, batch: int, min_seconds: float = 0.0) -> Any:
    """CPU time of `session.run` on this thread; the session must run single-threaded.

    On a CPU shared with other processes, wall-clock timings of multi-threaded runs are
    dominated by scheduling: a 0.1 ms layer fits between preemptions, a 100 ms model
    never does, so both cannot be compared. The calling thread's CPU time with one
    intra-op thread counts only the work, whatever else runs. It predicts one-thread
    latency on an idle core, not the deployment's multi-thread wall clock.
    """
    from hadmc_deploy.backends.base import LatencyStats
    from hadmc_deploy.timing import timed_samples

    for _ in range(warmup):
        session.run(None, feeds)
    samples = timed_samples(lambda: session.run(None, feeds), runs, min_seconds, clock=time.thread_time)
    return LatencyStats.from_samples(samples, batch=batch, warmup=warmup)


def cpu_time_timer(warmup: int, runs: int, int8_form: str | None = None) -> Timer:
    """Time specs as single-thread CPU time in ONNX Runtime with the deployment session options."""
    from hadmc_deploy.backends.onnxruntime import make_session
    from hadmc_deploy.layer_onnx import example_inputs, layer_model

    def timer(spec: LayerSpec) -> Any:
        model = layer_model(spec, int8_form=int8_form if spec.precision == "int8" else None)
        session = make_session(model.SerializeToString(), threads=1)
        return cpu_time_stats(session, example_inputs(model), warmup, runs, spec.batch)

    return timer
