"""Per-layer times of the real deployed graph, from ONNX Runtime's profiler.

Timing a layer alone misses what ONNX Runtime does across layers: conv + add +
relu fused into one kernel, the NCHWc layout kept between aligned convs (and
reorders inserted around an unaligned one), Q/DQ pairs folded into QLinearConv.
`SessionOptions.enable_profiling` records every kernel of the optimized graph as
it runs, so the time of each weighted layer *in context* can be read off.

Mapping ORT's nodes back to layers: fusion renames nodes and the NCHWc/NHWC
rewrites change shapes, but they never add, drop or reorder weighted ops (Conv,
Gemm, MatMul and their fused/quantized forms). So the k-th weighted kernel of
the session is the k-th weighted node of the source ONNX (and of the layer
graph); the counts are checked and a mismatch is reported, never guessed. The
time of the glue between two weighted kernels (reorders, Q/DQ, transposes,
unfused adds and pools) is split between them: it is the price of their
boundary.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from hadmc_deploy.errors import LatencyModelError

#: ORT kernels that carry a layer's weights (fp32, fused, NCHWc, quantized forms).
WEIGHTED_KERNELS = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "ConvTranspose", "NhwcConv",
    "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "QGemm", "QLinearMatMul", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})
#: source ONNX ops that are layers of the latency graph (MatMul only with a constant weight).
SOURCE_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class KernelTime:
    """One kernel of the optimized graph: its name, ORT op, median time per run (ms)."""

    name: str
    op: str
    ms: float

    @property
    def weighted(self) -> bool:
        return self.op in WEIGHTED_KERNELS


@dataclass
class SessionProfile:
    """Kernels in execution order, and the median wall time of a whole run under the profiler."""

    kernels: list[KernelTime]
    run_ms: float
    runs: int
    notes: list[str] = field(default_factory=list)

    @property
    def kernel_sum_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def weighted_times(self) -> list[float]:
        """Per weighted kernel (execution order): its time plus its share of the neighbouring glue."""
        idx = [i for i, k in enumerate(self.kernels) if k.weighted]
        if not idx:
            return []
        out = [self.kernels[i].ms for i in idx]
        glue = [0.0] * (len(idx) + 1)  # glue[j]: between weighted j-1 and j (0: before the first)
        j = 0
        for k in self.kernels:
            if k.weighted:
                j += 1
                continue
            glue[j] += k.ms
        out[0] += glue[0]
        out[-1] += glue[-1]
        for j in range(1, len(idx)):
            out[j - 1] += glue[j] / 2
            out[j] += glue[j] / 2
        return out


def source_weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the source graph's weighted nodes, in graph order (MatMul only with a constant weight)."""
    consts = {i.name for i in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type in ("Constant", "DequantizeLinear") and all(i in consts or not i for i in n.input[:1]) for o in n.output}
    names = []
    for n in model.graph.node:
        if n.op_type in SOURCE_WEIGHTED and (n.op_type != "MatMul" or any(i in consts for i in n.input[1:2])):
            names.append(n.name or f"{n.op_type}_{len(names)}")
    return names


def profile_session(
    model: str | Path | bytes,
    *,
    batch: int,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
) -> SessionProfile:
    """Run `model` with the deployment session options and the profiler on; median per kernel.

    The profiler's per-kernel clock adds a little per node; `run_ms` is measured under
    it too, so callers compare like with like (or rescale to an unprofiled wall time).
    """
    from hadmc_deploy.backends.ort_session import random_feeds
    from hadmc_deploy.latency.repeat import measuring_session

    with tempfile.TemporaryDirectory(prefix="hadmc-ortprof-") as tmp:
        try:
            sess = measuring_session(model, threads, enable_profiling=True, profile_file_prefix=str(Path(tmp) / "prof"))
        except Exception as exc:
            raise LatencyModelError(f"ONNX Runtime cannot load the model to profile: {str(exc).splitlines()[0][:200]}") from exc
        feeds = random_feeds(sess, batch=batch)
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return parse_profile(events, warmup=warmup)


def parse_profile(events: list[dict[str, Any]], warmup: int = 0) -> SessionProfile:
    """Kernels (execution order of the first run) with their median over the runs after `warmup`."""
    order: list[str] = []
    ops: dict[str, str] = {}
    times: dict[str, list[float]] = {}
    run_ms = [e["dur"] / 1000.0 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name not in times:
            order.append(name)
            ops[name] = str(e.get("args", {}).get("op_name", ""))
            times[name] = []
        times[name].append(e["dur"] / 1000.0)
    kernels = []
    for name in order:
        samples = times[name][warmup:] or times[name]
        kernels.append(KernelTime(name, ops[name], statistics.median(samples)))
    kept = run_ms[warmup:] or run_ms
    return SessionProfile(kernels, statistics.median(kept) if kept else sum(k.ms for k in kernels), len(kept))


def layer_times(profile: SessionProfile, source: onnx.ModelProto) -> dict[str, float]:
    """Source weighted node name -> in-context ms (its kernel plus its share of the glue).

    Raises `LatencyModelError` when the session's weighted kernels do not pair one to
    one with the source's weighted nodes (an optimizer that merged two convs, a
    weightless MatMul miscounted): no attribution is better than a wrong one.
    """
    names = source_weighted_nodes(source)
    times = profile.weighted_times()
    if len(names) != len(times):
        raise LatencyModelError(
            f"the profiled session runs {len(times)} weighted kernels for {len(names)} weighted nodes of the source graph",
            hint="per-layer in-context timing is not available for this graph; the whole-model correction is used instead",
        )
    return dict(zip(names, times, strict=True))


@dataclass
class Int8LayerTiming:
    """A weighted node's in-context time in the float graph and in the QDQ graph as ORT runs it."""

    node: str
    fp32_ms: float
    int8_ms: float

    @property
    def slower_in_int8(self) -> bool:
        return self.int8_ms > self.fp32_ms

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms, "ratio": self.int8_ms / max(self.fp32_ms, 1e-9)}


def int8_slow_layers(
    float_onnx: str | Path,
    qdq_onnx: str | Path,
    batch: int,
    *,
    threads: int | None = None,
    rounds: int = 3,
    runs: int = 10,
    margin: float = 0.05,
) -> tuple[list[str], list[Int8LayerTiming]]:
    """Which Conv/Gemm nodes of `float_onnx` run slower in INT8 (Q/DQ overhead included) than in FP32.

    Both sessions are profiled in `rounds` interleaved rounds (float, qdq, float, ...)
    and each node's time is the minimum over rounds of its per-round median, so load
    from other processes hits both alike. A node counts as slower only beyond
    `margin` (relative). Returns (slow node names, timings of every weighted node);
    the names are what `calibration.qdq.write_qdq(float_nodes=...)` takes.
    """
    src = onnx.load(str(float_onnx), load_external_data=False)
    best_f: dict[str, float] = {}
    best_q: dict[str, float] = {}
    for _ in range(max(rounds, 1)):
        for path, best in ((float_onnx, best_f), (qdq_onnx, best_q)):
            t = layer_times(profile_session(path, batch=batch, threads=threads, runs=runs), src)
            for k, v in t.items():
                best[k] = min(best.get(k, float("inf")), v)
    timings = [Int8LayerTiming(n, best_f[n], best_q[n]) for n in best_f]
    slow = [t.node for t in timings if t.int8_ms > t.fp32_ms * (1.0 + margin)]
    return slow, timings
