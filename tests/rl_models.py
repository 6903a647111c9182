"""Synthetic dependency graphs and a latency TEST DOUBLE for the RL search tests.

`StaircaseLatencyTestDouble` is not a latency model of any device: it prices a
layer by its MACs with SIMD-style padding to multiples of 8, INT8 at a third of
FP32, a fixed per-layer overhead, and (optionally) a deterministic bump per
width so latency is NOT monotonic in channels, which is what the clipping
property test needs to be worth anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph
from hadmc_deploy.specs import LayerSpec


@dataclass
class _Prediction:
    total_ms: float
    per_layer_ms: list[float]
    source: str = "test-double"


class StaircaseLatencyTestDouble:
    kind = "test-double"

    def __init__(self, bumps: bool = False, int8_factor: float = 1 / 3) -> None:
        self.bumps = bumps
        self.int8_factor = int8_factor
        self.calls = 0

    def layer_ms(self, spec: LayerSpec) -> float:
        pad = lambda c: 8 * math.ceil(c / 8)  # noqa: E731
        padded = spec.with_channels(pad(spec.in_channels), pad(spec.out_channels)) if spec.op != "dwconv" else spec
        ms = 0.001 + padded.macs() * 1e-7
        if spec.precision == "int8":
            ms *= self.int8_factor
        if self.bumps and spec.op in ("conv", "linear"):
            # a deterministic +-15% wobble per (in, out) pair: latency is not monotonic in width.
            ms *= 1.0 + 0.15 * math.sin(spec.in_channels * 1.7 + spec.out_channels * 2.3)
        return ms

    def predict(self, specs: list[LayerSpec]) -> _Prediction:
        self.calls += 1
        per = [self.layer_ms(s) for s in specs]
        return _Prediction(float(sum(per)), per)


def chain_graph(widths: tuple[int, ...] = (16, 32, 32, 64), hw: int = 16, classes: int = 10, granularity: int = 1) -> DependencyGraph:
    """conv stem -> convs (stride 2 where the width grows) -> global pool -> linear, one group per conv output.

    The last conv's group also feeds a residual add, like a ResNet stage output.
    """
    groups, layers = [], []
    in_ch, in_group, size = 1, None, hw
    for i, w in enumerate(widths):
        gid = f"g{i}"
        groups.append(ChannelGroup(gid, w, True, granularity=granularity, members=[{"module": f"conv{i}"}]))
        stride = 2 if i > 0 and w > widths[i - 1] else 1
        out = max(size // stride, 1)
        spec = LayerSpec("conv", in_ch, w, (3, 3), (stride, stride), (1, 1), in_hw=(size, size), out_hw=(out, out), bias=False, activation="relu")
        layers.append(CostedLayer(f"conv{i}", spec, (in_group,) if in_group else (), gid))
        in_ch, in_group, size = w, gid, out
    last = f"g{len(widths) - 1}"
    add = LayerSpec("add", in_ch, in_ch, in_hw=(size, size), out_hw=(size, size), n_inputs=2)
    layers.append(CostedLayer("add", add, (last,), last))
    pool = LayerSpec("globalpool", in_ch, in_ch, in_hw=(size, size), out_hw=(1, 1))
    layers.append(CostedLayer("pool", pool, (last,), last))
    fc = LayerSpec("linear", in_ch, classes)
    layers.append(CostedLayer("fc", fc, (last,), None))
    groups.append(ChannelGroup("classes", classes, False, reason="network output"))
    return DependencyGraph(groups, layers, (1, 1, hw, hw))


def random_scores(graph: DependencyGraph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.gamma(2.0, 1.0, size=g.width) for g in graph.prunable_groups}
