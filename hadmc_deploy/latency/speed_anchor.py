"""The machine's speed now: a fixed reference workload timed around (or beside) a measurement.

On the shared 2-vCPU machines here the same model runs in phases: over 90 s a small
CNN's median per 3 s window moved between 1.12 and 1.78 ms (+55%) while nothing else
ran in the container, phases last seconds to minutes, and no estimator over a window
of seconds is repeatable to 5% (`tools/trace_machine_speed.py`). Two tables
measured minutes apart disagreed by 30-38%.

The anchor is a small fixed CNN run with the measurement's threads. Its reference is
this machine's anchor time in a fast phase: the 10th percentile of a calibration
burst, lowered by every later calibration that finds the machine faster, persisted in
the user's cache per machine, thread count and backend version. With
`MeasureOptions.anchor` a table is measured between two calibrations and records how
much slower than the reference the machine ran. That is an instrument of the
validation tools, off in builds: in a wall-clock validation the anchor's slowdown did
not track the models' own drift between a table and its validation (the anchor x1.34
-> x1.68 while the demo CNN ran 11% faster), so it could not say by how much a table
is off, nor warn on it.

Two ways of *using* the anchor to make tables repeatable were tried and measured
(docs/latency_model.md):
* rescaling each time by the anchor's slowdown (a development scratch run; that code
  was removed) made four tables of the demo CNN at 96x96 disagree by 24% on the full
  model (three of four plain tables: 2%): a slow
  phase slows the 2-thread anchor by up to 40% and a 0.1 ms layer far less;
* the gate (`SpeedAnchor.is_quiet` checked before every pass; entries with no pass in
  a fast window re-timed) helped in one A/B run and hurt in the next, and cannot help
  when a slow phase outlasts its extra passes. It stays available
  (`MeasureOptions.speed_gate`, `tools/validate_latency_model.py --speed-gate / --anchor-ab`) and off.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.fileio import user_cache_root, write_json_atomic

#: bump when the anchor workload changes (persisted references of another workload are ignored).
ANCHOR_MODEL = "anchor-cnn-v1"
#: batch and input of the anchor: ~1 ms at 2 threads on the Xeon here, a mix of conv widths.
ANCHOR_INPUT = (8, 1, 28, 28)
#: the machine counts as in its fast state while the anchor runs within this fraction of its reference
#: (measured here: fast phases 1.12-1.17 ms, slow ones 1.37-1.78 ms for a 1.14 ms reference).
QUIET_TOLERANCE = 0.10


def anchor_model_bytes() -> bytes:
    """A small seeded CNN (3 convs, pool, linear) as ONNX: the same bytes on every machine."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...]) -> Any:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    inits = [weight("w1", (32, 1, 3, 3)), weight("b1", (32,)), weight("w2", (64, 32, 3, 3)), weight("b2", (64,)),
             weight("w3", (64, 64, 3, 3)), weight("b3", (64,)), weight("wf", (10, 64)), weight("bf", (10,))]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], **conv), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], **conv), helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p2", "w3", "b3"], ["c3"], **conv), helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["output"], transB=1),
    ]
    graph = helper.make_graph(nodes, "speed_anchor", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(ANCHOR_INPUT))],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [ANCHOR_INPUT[0], 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass
class SpeedAnchor:
    """Times the anchor when its last sample is older than `gap_s`; `is_quiet` says whether the
    machine runs at its reference speed now."""

    threads: int | None
    clock: str = "wall"
    reference_ms: float = 0.0
    #: this anchor's own calibration (10th percentile of its calibration burst)
    calibrated_ms: float | None = None
    gap_s: float = 0.2
    #: the anchor's time now is the median of its samples over the last `window_s`: one short
    #: burst is noisy (the machine is bursty at the scale of milliseconds); phases last seconds.
    window_s: float = 1.0
    runs: int = 5
    samples: list[tuple[float, float]] = field(default_factory=list)
    #: measurements gated by this anchor, and how many of them had a pass in a fast window
    gated: int = 0
    gated_quiet: int = 0
    _run: Callable[[], float] | None = field(default=None, repr=False)

    def _runner(self) -> Callable[[], float]:
        if self._run is None:
            from hadmc_deploy.latency.repeat import clock_function, measuring_session

            session = measuring_session(anchor_model_bytes(), 1 if self.clock == "cpu" else self.threads)
            feeds = {"input": np.random.default_rng(1).standard_normal(ANCHOR_INPUT).astype(np.float32)}
            for _ in range(5):
                session.run(None, feeds)
            now = clock_function(self.clock)

            def run() -> float:
                session.run(None, feeds)  # untimed: the first run after other work (or a pause) runs cold
                times = []
                for _ in range(self.runs):
                    start = now()
                    session.run(None, feeds)
                    times.append((now() - start) * 1000.0)
                return statistics.median(times)

            self._run = run
        return self._run

    def sample(self) -> float:
        ms = self._runner()()
        self.samples.append((time.monotonic(), ms))
        return ms

    def current_ms(self) -> float:
        """The anchor's time now (a fresh sample when the last is older than `gap_s`)."""
        now = time.monotonic()
        if not self.samples or now - self.samples[-1][0] > self.gap_s:
            self.sample()
            now = time.monotonic()
        recent = [ms for t, ms in self.samples[-20:] if now - t <= self.window_s]
        return statistics.median(recent) if recent else self.samples[-1][1]

    def calibrate(self, seconds: float = 1.0) -> float:
        """Sample back to back for `seconds`; the 10th percentile (a fast phase, not one lucky burst)."""
        end = time.monotonic() + seconds
        got = []
        while time.monotonic() < end or len(got) < 10:
            got.append(self.sample())
        self.calibrated_ms = float(np.percentile(got, 10))
        return self.calibrated_ms

    def is_quiet(self, tolerance: float = QUIET_TOLERANCE) -> bool:
        """The anchor now runs within `tolerance` of its reference (no reference: always)."""
        return self.reference_ms <= 0 or self.current_ms() <= self.reference_ms * (1 + tolerance)

    def record(self, quiet: bool) -> None:
        """Count one gated measurement (an entry, a context plan) and whether it had a fast pass."""
        self.gated += 1
        self.gated_quiet += int(quiet)

    def quiet_fraction(self) -> float | None:
        return self.gated_quiet / self.gated if self.gated else None

    def slowdown(self) -> float:
        """Median anchor time over the reference across this anchor's samples (1.0: the reference speed)."""
        if not self.samples or self.reference_ms <= 0:
            return 1.0
        return statistics.median(ms for _, ms in self.samples) / self.reference_ms

    def to_dict(self) -> dict[str, Any]:
        times = [ms for _, ms in self.samples]
        return {
            "model": ANCHOR_MODEL, "reference_ms": round(self.reference_ms, 5),
            "calibrated_ms": None if self.calibrated_ms is None else round(self.calibrated_ms, 5), "threads": self.threads, "clock": self.clock,
            "samples": len(times), "median_ms": round(statistics.median(times), 5) if times else None,
            "min_ms": round(min(times), 5) if times else None, "max_ms": round(max(times), 5) if times else None,
            "gated": self.gated, "gated_quiet": self.gated_quiet,
        }


def default_store() -> Path:
    """The machine's anchor references, shared by every table measured here."""
    return user_cache_root() / "speed-anchor.json"


def machine_key(device: dict[str, Any], backend_version: str, threads: int | None, clock: str) -> str:
    from hadmc_deploy.latency.lut import IDENTITY_KEYS

    ident = {k: device.get(k) for k in IDENTITY_KEYS if k in device}
    blob = json.dumps([ANCHOR_MODEL, ident, backend_version, threads, clock], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def machine_anchor(store: Path | None, device: dict[str, Any], backend_version: str, threads: int | None, clock: str = "wall",
                   calibrate_s: float = 1.0) -> SpeedAnchor:
    """An anchor calibrated now, its reference the lower of this calibration and the one persisted
    in `store` (a JSON file of machine key -> reference ms; None: nothing persisted)."""
    anchor = SpeedAnchor(threads=threads, clock=clock)
    found = anchor.calibrate(calibrate_s)
    key = machine_key(device, backend_version, threads, clock)
    known: dict[str, Any] = {}
    if store is not None and store.exists():
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
    previous = (known.get(key) or {}).get("reference_ms")
    anchor.reference_ms = min(found, float(previous)) if previous else found
    if store is not None and anchor.reference_ms != previous:
        known[key] = {"reference_ms": anchor.reference_ms, "model": ANCHOR_MODEL, "threads": threads, "clock": clock,
                      "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        store.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(store, known)
    return anchor


def table_anchor(table: Any, threads: int | None, calibrate_s: float = 0.5) -> SpeedAnchor | None:
    """An anchor with the reference `table` was measured with (None: the table has no anchor):
    what a validation uses to time plans in the same fast windows as the table's entries."""
    info = (table.meta.method or {}).get("anchor")
    if not info or info.get("model") != ANCHOR_MODEL:
        return None
    anchor = SpeedAnchor(threads=info.get("threads", threads), clock=info.get("clock", "wall"), reference_ms=float(info["reference_ms"]))
    anchor.calibrate(calibrate_s)
    return anchor
