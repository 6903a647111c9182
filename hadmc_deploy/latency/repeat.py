"""Repeatable per-layer timing on a shared CPU: interleaved passes, min of per-pass medians.

Other processes only ever add time, and they come in bursts. Timing each layer
once, back to back, lets a burst land on a few entries and skew them (two tables
measured minutes apart differed 0.5x-2.5x per entry). Here a chunk of layers is
prepared (sessions built, warmed up) and then timed in several passes over the
whole chunk; each pass yields a median per layer (rejecting outlier runs), and
an entry's value is the minimum over passes of those medians ("mom"): a burst
must then cover every pass of a layer to bias it. The relative range of the
per-pass medians is kept as the entry's `spread`: its measured noise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.latency.lut import LatencyTable
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import UI, quiet_ui

#: a prepared layer: run n timed runs, return their times (ms).
Prepared = Callable[[int], list[float]]
#: builds (and warms up) what times one spec.
Preparer = Callable[[LayerSpec], Prepared]


class SpeedGate(Protocol):
    """What a measurement asks of the speed anchor (latency/speed_anchor.py) when it gates."""

    def is_quiet(self) -> bool:
        """The machine runs in its fast state now."""

    def record(self, quiet: bool) -> None:
        """Count one gated measurement and whether it had a pass in a fast window."""


@dataclass
class Repeated:
    """Statistics of one spec over interleaved passes."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mom_ms: float
    spread: float
    runs: int
    #: at least one pass ran while the speed anchor said the machine was in its fast state (None: no anchor)
    quiet: bool | None = None


def measuring_session(model: str | Path | bytes, threads: int | None = None, disabled_optimizers: Sequence[str] = (), *,
                      allow_spinning: bool = False, **options: Any) -> Any:
    """A CPU session with the deployment options, except that idle worker threads block instead
    of spinning. Several sessions alive at once (interleaved timing) would otherwise steal the
    cores from each other: on this 2-core shared machine a 1.1 ms conv timed at 2-25 ms with
    spinning and 1.1-2.4 ms (the staircase) without.

    `allow_spinning=True` keeps the deployment's spinning, for a caller that holds one session at a
    time (whole deployed models): blocking workers wake up late on every parallel op, which made
    the demo CNN at 28x28 and batch 1 run 1.13-1.33x slower than its deployed session, 1.07-1.08x at
    96x96, 1.01-1.03x at batch 32 and a ResNet-18 at 224 no slower (tools/bench_spinning.py,
    docs/spinning.md: one session alive at a time, interleaved)."""
    import onnxruntime as ort

    from hadmc_deploy.backends.ort_session import disabled_kwargs, session_options

    so = session_options(threads)
    if not allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.items():
        setattr(so, key, value)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"], **disabled_kwargs(disabled_optimizers))


def clock_function(clock: str) -> Callable[[], float]:
    """"wall": time.perf_counter; "cpu": this thread's CPU time (meaningful with one intra-op thread:
    it counts the work only, whatever else runs on the machine)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"unknown clock {clock!r}")
    return time.thread_time if clock == "cpu" else time.perf_counter


def ort_preparer(warmup: int = 3, threads: int | None = None, int8_form: str | None = None, clock: str = "wall") -> Preparer:
    """ONNX Runtime sessions of single-layer graphs (see `measuring_session`); clock "cpu" runs one thread."""
    from hadmc_deploy.backends.ort_session import random_feeds
    from hadmc_deploy.layer_onnx import layer_model

    def prepare(spec: LayerSpec) -> Prepared:
        model = layer_model(spec, int8_form=int8_form if spec.precision == "int8" else None)
        session = measuring_session(model.SerializeToString(), 1 if clock == "cpu" else threads)
        feeds = random_feeds(session, batch=spec.batch)
        for _ in range(warmup):
            session.run(None, feeds)
        now = clock_function(clock)

        def run(n: int) -> list[float]:
            samples = []
            for _ in range(n):
                start = now()
                session.run(None, feeds)
                samples.append((now() - start) * 1000.0)
            return samples

        return run

    return prepare


def backend_preparer(backend: Any, warmup: int = 3) -> Preparer:
    """Any backend's `measure_layer` (TensorRT on a GPU host): rebuilt per pass, so slower."""

    def prepare(spec: LayerSpec) -> Prepared:
        def run(n: int) -> list[float]:
            stats = backend.measure_layer(spec, warmup=warmup, runs=n)
            return [stats.p50_ms] * max(n // 2, 1) + [stats.min_ms]

        return run

    return prepare


def time_interleaved(
    specs: list[LayerSpec],
    prepare: Preparer,
    *,
    passes: int = 3,
    runs_per_pass: int = 5,
    chunk: int = 24,
    deadline: float | None = None,
    on_chunk: Callable[[list[tuple[LayerSpec, Repeated]]], None] | None = None,
    failed: list[str] | None = None,
    anchor: SpeedGate | None = None,
    max_extra_passes: int = 4,
) -> list[tuple[LayerSpec, Repeated]]:
    """Time `specs` in chunks, each in `passes` interleaved passes; stops at `deadline` (monotonic s).

    With a speed `anchor` (latency/speed_anchor.py), a layer none of whose passes ran while the
    machine was in its fast state gets up to `max_extra_passes` more passes: an entry's value is the
    fastest pass, so one pass in a fast window is enough, and a chunk that fell entirely into a
    slow phase (the anchor 20-55% slower for seconds at a time) is timed again instead of kept."""
    done: list[tuple[LayerSpec, Repeated]] = []
    for start in range(0, len(specs), chunk):
        if deadline is not None and time.monotonic() > deadline:
            break
        prepared: list[tuple[LayerSpec, Prepared]] = []
        for spec in specs[start : start + chunk]:
            try:
                prepared.append((spec, prepare(spec)))
            except LatencyModelError as exc:
                if failed is not None:
                    failed.append(f"{spec.key()}: {exc.one_line()}")
            except Exception as exc:  # the backend refused this configuration (priced analytically later)
                if failed is not None:
                    failed.append(f"{spec.key()}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        samples: list[list[float]] = [[] for _ in prepared]
        medians: list[list[float]] = [[] for _ in prepared]
        quiet = [False] * len(prepared)
        for n in range(passes + (max_extra_passes if anchor is not None else 0)):
            which = [i for i, q in enumerate(quiet) if n < passes or not q]
            if n >= passes and (not which or (deadline is not None and time.monotonic() > deadline)):
                break
            for i in which:
                if anchor is not None:
                    quiet[i] |= anchor.is_quiet()
                got = prepared[i][1](runs_per_pass)
                samples[i] += got
                medians[i].append(statistics.median(got))
        results = []
        for (spec, _), s, m, q in zip(prepared, samples, medians, quiet, strict=True):
            if anchor is not None:
                anchor.record(q)
            s_sorted = sorted(s)
            mom = min(m)
            results.append((spec, Repeated(
                median_ms=statistics.median(s),
                p90_ms=s_sorted[min(len(s) - 1, int(0.9 * len(s)))],
                min_ms=s_sorted[0],
                mom_ms=mom,
                spread=(max(m) - mom) / mom if mom > 0 else 0.0,
                runs=len(s),
                quiet=q if anchor is not None else None,
            )))
        done += results
        if on_chunk is not None:
            on_chunk(results)
    return done


def measure_into_table(
    specs: list[LayerSpec],
    table: LatencyTable,
    path: str | Path | None,
    prepare: Preparer,
    *,
    role: str = "grid",
    passes: int = 3,
    runs_per_pass: int = 5,
    deadline: float | None = None,
    anchor: SpeedGate | None = None,
    ui: UI | None = None,
) -> tuple[int, list[str]]:
    """Time the specs missing from `table` into it (saved atomically after every chunk); (measured, failures)."""
    ui = ui or quiet_ui()
    todo = [s for s in specs if s not in table]
    failed: list[str] = []

    def store(results: list[tuple[LayerSpec, Repeated]]) -> None:
        for spec, r in results:
            table.add(spec, r.median_ms, r.p90_ms, r.runs, r.min_ms, mom_ms=r.mom_ms, spread=r.spread, role=role)
        if path is not None:
            table.save(path)
        bar.advance(len(results))

    with ui.progress(f"measuring layers ({role})", len(todo)) as bar:
        done = time_interleaved(todo, prepare, passes=passes, runs_per_pass=runs_per_pass, deadline=deadline, on_chunk=store, failed=failed, anchor=anchor)
    return len(done), failed
