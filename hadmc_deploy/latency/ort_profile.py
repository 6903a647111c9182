"""Per-layer times of the real deployed graph, from ONNX Runtime's profiler.

Timing a layer alone misses what ONNX Runtime does across layers: conv + add +
relu fused into one kernel, the NCHWc layout kept between aligned convs (and
reorders inserted around an unaligned one), Q/DQ pairs folded into QLinearConv.
`SessionOptions.enable_profiling` records every kernel of the optimized graph as
it runs, so the time of each weighted layer *in context* can be read off.

Mapping ORT's nodes back to layers: fusion renames nodes and the NCHWc/NHWC
rewrites change layouts, but they never drop weighted ops (Conv, Gemm,
MatMul and their fused/quantized forms), and the one they add is the NCHWc
transformer's Conv standing in for a BatchNormalization no conv absorbed (a
DenseNet's BN after each Concat: 62 of them, named `<its output>_bn_nchwc`),
which is glue here like the BatchNormalization it replaces. They reorder branches (a ResNet's
1x1 shortcut conv runs after the 3x3 path, an Inception block's branches in an order of their
own), so kernels are paired with source nodes by the names ORT keeps for them first, then by key
(kind and kernel size from the weight's shape) in order (latency/kernel_pairing.py); the counts per
key are checked and a mismatch is reported, never guessed. The
time of the glue between two weighted kernels (reorders, Q/DQ, transposes,
unfused adds and pools) is split between them: it is the price of their
boundary.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.latency.kernel_pairing import pair_kernels
from hadmc_deploy.timing import timed_samples

#: ORT kernels that carry a layer's weights (fp32, fused, NCHWc, quantized forms).
WEIGHTED_KERNELS = frozenset({
    "Conv", "FusedConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "ConvTranspose", "NhwcConv",
    "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "QGemm", "QLinearMatMul", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
})
#: how ONNX Runtime's NCHWc transformer names the Conv it puts in place of a BatchNormalization
NCHWC_BATCHNORM_SUFFIX = "_bn_nchwc"
#: source ONNX ops that are layers of the latency graph (MatMul only with a constant weight).
SOURCE_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class KernelTime:
    """One kernel of the optimized graph: its name, ORT op, median time per run (ms)."""

    name: str
    op: str
    ms: float
    #: ("conv", kh, kw) or ("linear",): what pairs it with a source node.
    key: tuple = ()

    @property
    def weighted(self) -> bool:
        return self.op in WEIGHTED_KERNELS and not self.name.endswith(NCHWC_BATCHNORM_SUFFIX)


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


#: profiled runs at most, however fast the model (every run adds an event per kernel to the profile).
MAX_PROFILED_RUNS = 200

#: index of the weight among a kernel's inputs (QLinearConv: x, x_scale, x_zero_point, w, ...).
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}


def kernel_key(op: str, weight_shape: list[int] | None) -> tuple:
    """("conv", kh, kw) for convolutions, ("linear",) for the rest of the weighted ops."""
    if "Conv" in op:
        dims = list(weight_shape or [])
        return ("conv", *dims[2:4]) if len(dims) >= 4 else ("conv",)
    return ("linear",)


def source_weighted_nodes(model: onnx.ModelProto) -> list[tuple[str, tuple]]:
    """(name, key) of the source graph's weighted nodes, in graph order (MatMul only with a constant weight)."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    consts = set(shapes)
    for n in model.graph.node:  # weights reached through DequantizeLinear (QDQ) or Constant
        if n.op_type in ("Constant", "DequantizeLinear") and (n.op_type == "Constant" or n.input[0] in consts):
            consts |= set(n.output)
            if n.op_type == "DequantizeLinear":
                shapes[n.output[0]] = shapes.get(n.input[0], [])
    out = []
    for n in model.graph.node:
        if n.op_type in SOURCE_WEIGHTED and (n.op_type != "MatMul" or any(i in consts for i in n.input[1:2])):
            weight = n.input[1] if len(n.input) > 1 else ""
            out.append((n.name or f"{n.op_type}_{len(out)}", kernel_key(n.op_type, shapes.get(weight))))
    return out


def profile_session(
    model: str | Path | bytes,
    *,
    batch: int,
    threads: int | None = None,
    warmup: int = 3,
    runs: int = 10,
    disabled_optimizers: Sequence[str] = (),
    allow_spinning: bool = False,
    min_seconds: float = 0.0,
) -> SessionProfile:
    """Run `model` with the deployment session options and the profiler on; median per kernel.
    `allow_spinning`: see `latency.repeat.measuring_session` (True only with no other session alive).
    `min_seconds`: more runs while under that much time has passed (hadmc_deploy.timing).

    The profiler's per-kernel clock adds a little per node; `run_ms` is measured under
    it too, so callers compare like with like (or rescale to an unprofiled wall time).
    """
    from hadmc_deploy.backends.ort_session import random_feeds
    from hadmc_deploy.latency.repeat import measuring_session

    with tempfile.TemporaryDirectory(prefix="hadmc-ortprof-") as tmp:
        try:
            sess = measuring_session(model, threads, disabled_optimizers, allow_spinning=allow_spinning, enable_profiling=True, profile_file_prefix=str(Path(tmp) / "prof"))
        except Exception as exc:
            raise LatencyModelError(f"ONNX Runtime cannot load the model to profile: {str(exc).splitlines()[0][:200]}") from exc
        feeds = random_feeds(sess, batch=batch)
        for _ in range(warmup):
            sess.run(None, feeds)
        timed_samples(lambda: sess.run(None, feeds), runs, min_seconds, max_runs=MAX_PROFILED_RUNS)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return parse_profile(events, warmup=warmup)


def parse_profile(events: list[dict[str, Any]], warmup: int = 0) -> SessionProfile:
    """Kernels (execution order of the first run) with their median over the runs after `warmup`."""
    order: list[str] = []
    ops: dict[str, str] = {}
    keys: dict[str, tuple] = {}
    times: dict[str, list[float]] = {}
    run_ms = [e["dur"] / 1000.0 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name not in times:
            order.append(name)
            args = e.get("args", {})
            ops[name] = str(args.get("op_name", ""))
            inputs = [next(iter(d.values()), None) for d in args.get("input_type_shape", []) if isinstance(d, dict)]
            w = _WEIGHT_INPUT.get(ops[name], 1)
            keys[name] = kernel_key(ops[name], inputs[w] if len(inputs) > w else None)
            times[name] = []
        times[name].append(e["dur"] / 1000.0)
    kernels = []
    for name in order:
        samples = times[name][warmup:] or times[name]
        kernels.append(KernelTime(name, ops[name], statistics.median(samples), keys[name]))
    kept = run_ms[warmup:] or run_ms
    return SessionProfile(kernels, statistics.median(kept) if kept else sum(k.ms for k in kernels), len(kept))


def layer_times(profile: SessionProfile, source: onnx.ModelProto) -> dict[str, float]:
    """Source weighted node name -> in-context ms (its kernel plus its share of the glue).

    Raises `LatencyModelError` when the session's weighted kernels do not pair one to
    one with the source's weighted nodes (an optimizer that merged two convs, a
    weightless MatMul miscounted): no attribution is better than a wrong one.
    """
    nodes = source_weighted_nodes(source)
    profile = _activation_products_unweighted(profile, source, {name for name, _ in nodes})
    weighted = [k for k in profile.kernels if k.weighted]
    kernels = [(t, k.key) for t, k in zip(profile.weighted_times(), weighted, strict=True)]
    pairs = pair_kernels(nodes, [k.name for k in weighted], kernels, source.graph)
    if pairs is None:
        raise LatencyModelError(
            f"the profiled session's {len(kernels)} weighted kernels do not pair with the {len(nodes)} weighted nodes of the source graph",
            hint="per-layer in-context timing is not available for this graph; the whole-model correction is used instead",
        )
    return {nodes[i][0]: kernels[j][0] for i, j in pairs}


def _activation_products_unweighted(profile: SessionProfile, source: onnx.ModelProto, weighted: set[str]) -> SessionProfile:
    """`profile` with the kernels of the source's MatMuls between two activations (an attention map,
    a non-local block's products) counted as glue: the source graph does not count them as weighted
    (`source_weighted_nodes`), and a profile that did never paired (a non-local CNN lost its per-layer
    correction and its mixed INT8/FP32 graph). Kernels are known by the source node's name, which
    ONNX Runtime keeps with a suffix ("node_matmul/MatmulTransposeFusion/", "..._token_5"). `weighted`:
    the names of the source's weighted nodes."""
    products = {n.name for n in source.graph.node if n.op_type == "MatMul" and n.name and n.name not in weighted}
    if not products:
        return profile

    def source_name(kernel: str) -> str:
        return re.sub(r"(_token_\d+|_nchwc)+$", "", kernel.split("/")[0])

    kernels = [KernelTime(k.name, f"{k.op} of activations", k.ms, k.key) if k.weighted and source_name(k.name) in products else k for k in profile.kernels]
    return SessionProfile(kernels, profile.run_ms, profile.runs, list(profile.notes))


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
    src = onnx.load(str(float_onnx), load_external_data=False)  # the names write_qdq(float_nodes=) takes
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
