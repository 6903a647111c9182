"""What the context fit measures (latency/context.py): the deployed plans built as the build
builds them, each weighted layer's in-context time read by the backend's probe
(latency/context_probe.py) and each plan's whole-model time, interleaved over rounds.

Kept apart from the fit so that the fit is a function of these numbers alone: a tool can fit
subsets of the plans on the same measurements (tools/ablate_context_plans.py) and compare what
each would have predicted without the machine's noise between them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.alignment import WEIGHTED_OPS
from hadmc_deploy.latency.context_build import build_deployed_artifact, faster_exporter
from hadmc_deploy.latency.context_plans import same_plan
from hadmc_deploy.latency.context_probe import probe_for
from hadmc_deploy.latency.kernel_pairing import match_by_key
from hadmc_deploy.latency.lut import LatencyTable
from hadmc_deploy.latency.ort_profile import kernel_key, source_weighted_nodes
from hadmc_deploy.latency.repeat import SpeedGate
from hadmc_deploy.latency.whole_model import TimingRanges
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, expected_fastest
from hadmc_deploy.ui import UI, quiet_ui

#: more rounds for a plan none of whose rounds ran while the speed anchor said the machine was fast.
MAX_EXTRA_ROUNDS = 4
#: rounds of the context fit at most, with `more_rounds_seconds` (the CPU clock's floor).
MAX_CONTEXT_ROUNDS = 20
#: whole-model rounds per plan at most, with `model_seconds` (wall clock)
MAX_MODEL_ROUNDS = 3 * WHOLE_MODEL_ROUNDS
#: times the plans a `recheck` names are timed again, at most ...
MAX_RECHECKS = 2
#: ... and while the rechecks took less than this share of the measurement before them: a plan of
#: ResNet-18 at batch 32 takes about 4 s a round, and a recheck must not double a table's time
RECHECK_SHARE = 0.5


@dataclass
class ContextMeasurements:
    """Per profiled plan: its widths, its weighted layers' in-context ms (the layers of
    `weighted_idx`, in graph order), its whole-model ms, and the row the table records."""

    plans: dict[str, dict[str, int]]
    weighted_idx: list[int]
    layer_ms: dict[str, list[float]]
    model_ms: dict[str, float]
    rows: dict[str, dict[str, Any]]

    def subset(self, names: list[str]) -> ContextMeasurements:
        """The same measurements of fewer plans (in the order given)."""
        return ContextMeasurements({n: self.plans[n] for n in names}, self.weighted_idx, {n: self.layer_ms[n] for n in names},
                                   {n: self.model_ms[n] for n in names}, {n: self.rows[n] for n in names})


def measure_plans(
    table: LatencyTable,
    model: nn.Module,
    graph: DependencyGraph,
    input_shape: tuple[int, ...],
    backend: Any,
    *,
    plans: dict[str, dict[str, int]],
    rounds: int = 3,
    runs: int = WHOLE_MODEL_RUNS,
    threads: int | None = None,
    exporter: str = "deploy",
    baseline_onnx: Path | None = None,
    clock: str = "wall",
    anchor: SpeedGate | None = None,
    more_rounds_seconds: float = 0.0,
    model_seconds: float = 0.0,
    recheck: Callable[[ContextMeasurements], list[str]] | None = None,
    ui: UI | None = None,
) -> ContextMeasurements:
    """Profile `plans` as deployed, interleaved over `rounds`: each weighted layer's in-context
    time and each plan's whole-model time. Raises LatencyModelError when kernels cannot be mapped
    to layers.

    Every profiled time is the minimum over rounds (load only adds time), whole-model times (each
    round's median) over WHOLE_MODEL_ROUNDS rounds at least, the fastest of which is what the
    build's latency check and decide stage measure. With a speed `anchor`
    (latency/speed_anchor.py) a plan none of whose rounds ran in a fast window of the machine gets
    up to `MAX_EXTRA_ROUNDS` more, as the table's layers get more passes. With clock "cpu" the
    sessions run one thread and whole-model times are CPU time; the profiler's kernel
    times are wall clock, so there they only apportion the measured total. With
    `more_rounds_seconds`, rounds go on while the rounds so far took less than that (at most
    MAX_CONTEXT_ROUNDS): the minimum over more rounds is a floor that repeats (see
    MeasureOptions.cpu_context_seconds). On the wall clock a plan's whole-model time is the
    expected fastest of WHOLE_MODEL_ROUNDS rounds (`timing.expected_fastest`), estimated from
    further rounds of every plan while they take under `model_seconds` (at most MAX_MODEL_ROUNDS).
    `recheck`: given the measurements, the plans whose numbers disagree with each other (the
    context fit's own test, `context.inconsistent_plans`); those are profiled and timed again, their
    rounds added to the ones before (a disturbed minute then weighs less in both minima), up to
    MAX_RECHECKS times within RECHECK_SHARE of the time measured so far. Each row records its
    `rechecks` apart from `rounds` (the rounds every plan had).
    """
    ui = ui or quiet_ui()
    probe = probe_for(backend, threads, clock)
    precision, batch = table.meta.precision, table.meta.batch
    weighted_idx = [i for i, layer in enumerate(graph.layers) if layer.spec.op in WEIGHTED_OPS]
    full = graph.full_widths()
    with tempfile.TemporaryDirectory(prefix="hadmc-context-") as tmp:
        built = {}
        ranges = TimingRanges(input_shape)  # INT8 timing ranges shared by the plans
        plan_exporter = exporter
        full_name = next((name for name, widths in plans.items() if same_plan(graph, widths, full)), None)
        if exporter == "deploy" and full_name is not None and backend.name == "onnxruntime":
            built[full_name] = build_deployed_artifact(model, graph, full, input_shape, backend, precision, Path(tmp), full_name, float_onnx=baseline_onnx, ranges=ranges)
            plan_exporter = faster_exporter(model, graph, input_shape, backend, precision, Path(tmp), built[full_name][1], batch, threads, ranges)
            ui.log("context plans exported by " + ("TorchScript (checked: its graph runs the deployed graph's kernels)" if plan_exporter == "fast"
                                                   else "the deploy exporter (TorchScript's graph would run other kernels, or did not export or build)"))
        for name, widths in ui.track(list(plans.items()), "building deployed plans"):
            if name in built:
                continue
            reuse = baseline_onnx if (baseline_onnx is not None and same_plan(graph, widths, full)) else None
            built[name] = build_deployed_artifact(model, graph, widths, input_shape, backend, precision, Path(tmp), name, exporter=plan_exporter, float_onnx=reuse, ranges=ranges)
        built = {name: built[name] for name in plans}  # the plans' order: the order of every round
        sources = {name: onnx.load(str(f), load_external_data=False) for name, (f, _) in built.items()}
        layer_keys = [(i, kernel_key("Conv" if graph.layers[i].spec.op != "linear" else "Gemm", [0, 0, *graph.layers[i].spec.kernel])) for i in weighted_idx]
        node_of_layer: dict[str, dict[int, str]] = {}
        for name, src in sources.items():
            nodes = source_weighted_nodes(src)
            pairs = match_by_key(layer_keys, nodes)
            if pairs is None:
                raise LatencyModelError(
                    f"plan {name!r} exports {len(nodes)} weighted nodes that do not pair with the {len(weighted_idx)} weighted layers of the graph",
                    hint="the per-layer context correction is not available for this model",
                )
            node_of_layer[name] = {layer_keys[a][0]: nodes[b][0] for a, b in pairs}
        best: dict[str, list[float]] = {}
        round_ms: dict[str, list[float]] = {name: [] for name in built}  # each whole-model round's median
        quiet = dict.fromkeys(built, False)

        def time_round(names: list[str]) -> None:
            for name in names:
                if anchor is not None:
                    quiet[name] |= anchor.is_quiet()
                art = built[name][1]
                by_node = probe.node_times(art, sources[name], batch, runs)
                missing = [node_of_layer[name][i] for i in weighted_idx if node_of_layer[name][i] not in by_node]
                if missing:
                    raise LatencyModelError(f"the {backend.name} profile of plan {name!r} has no time for {len(missing)} weighted node(s) ({', '.join(missing[:3])})",
                                            hint="the per-layer context correction is not available for this model")
                times = [by_node[node_of_layer[name][i]] for i in weighted_idx]
                best[name] = times if name not in best else [min(a, b) for a, b in zip(best[name], times, strict=True)]
                model_round([name])

        def model_round(names: list[str]) -> None:
            for name in names:
                round_ms[name].append(probe.model_ms(built[name][1], batch, runs))

        started = time.monotonic()
        for _ in ui.track(range(rounds), "profiling deployed plans (interleaved)"):
            time_round(list(built))
        done = rounds
        while done < MAX_CONTEXT_ROUNDS and time.monotonic() - started < more_rounds_seconds:
            time_round(list(built))
            done += 1
        for _ in range(MAX_EXTRA_ROUNDS if anchor is not None else 0):
            slow = [name for name, q in quiet.items() if not q]
            if not slow:
                break
            time_round(slow)
        # whole-model times over as many rounds as the build's latency check and decide stage
        # take (the profiles need fewer): the same estimator as what the predictions are checked on
        while min(len(r) for r in round_ms.values()) < WHOLE_MODEL_ROUNDS:
            model_round([name for name in built if len(round_ms[name]) < WHOLE_MODEL_ROUNDS])
        # and more while they fit in `model_seconds`: the expected fastest of WHOLE_MODEL_ROUNDS
        # estimated from more rounds moves less between tables (timing.expected_fastest)
        extra_started = time.monotonic()
        while clock == "wall" and min(len(r) for r in round_ms.values()) < MAX_MODEL_ROUNDS and time.monotonic() - extra_started < model_seconds:
            model_round(list(built))

        def measurements() -> ContextMeasurements:
            walls = {name: expected_fastest(r) if clock == "wall" else min(r) for name, r in round_ms.items()}
            rows = {name: {"plan": name, "measured_ms": walls[name], "rounds": done, "model_rounds": len(round_ms[name]),
                           "round_ms": [round(r, 5) for r in round_ms[name]],  # for the table's stated spread (latency/stated_spread.py)
                           "exporter": exporter if name == full_name else plan_exporter,  # plan_exporter differs only for exporter "deploy"
                           "kernel_sum_ms": sum(best[name]), **({"rechecks": rechecked[name]} if recheck is not None else {}),
                           **({"quiet": quiet[name]} if anchor is not None else {})} for name in plans}
            return ContextMeasurements(dict(plans), weighted_idx, {n: list(best[n]) for n in plans}, {n: walls[n] for n in plans}, rows)

        rechecked = dict.fromkeys(built, 0)
        measured_for = time.monotonic() - started
        recheck_started = time.monotonic()
        for _ in range(MAX_RECHECKS if recheck is not None else 0):
            again = [name for name in recheck(measurements()) if name in built]
            if not again or time.monotonic() - recheck_started > RECHECK_SHARE * measured_for:
                break
            ui.log(f"context plans timed again (their profile and whole-model times disagree): {', '.join(again)}")
            time_round(again)
            for _ in range(WHOLE_MODEL_ROUNDS - 1):
                model_round(again)
            for name in again:
                rechecked[name] += 1
        if anchor is not None:
            for q in quiet.values():
                anchor.record(q)
    return measurements()
