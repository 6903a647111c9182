"""Synthetic dependency graphs and a latency-model TEST DOUBLE for the search tests.

`MacLatencyDouble` stands in for the real `LatencyModel` (same `predict(specs)`
interface): each layer costs its MACs times a rate, plus an optional penalty
when its output width is off a multiple of `stair` (the staircase a real
kernel shows), so search behaviour can be checked against brute force
without measuring anything.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph
from hadmc_deploy.specs import LayerSpec


@dataclass
class DoublePrediction:
    total_ms: float
    per_layer_ms: list[float]
    source: str = "test-double"


class MacLatencyDouble:
    """TEST DOUBLE of LatencyModel: ms = macs * rate (+ penalty off the staircase)."""

    def __init__(self, rate: float = 1e-6, stair: int | None = None, penalty_ms: float = 0.0, overhead_ms: float = 0.0) -> None:
        self.rate = rate
        self.stair = stair
        self.penalty_ms = penalty_ms
        self.overhead_ms = overhead_ms

    def layer_ms(self, spec: LayerSpec) -> float:
        ms = spec.macs() * self.rate
        if self.stair and spec.out_channels % self.stair:
            ms += self.penalty_ms
        return ms

    def predict(self, specs: list[LayerSpec]) -> DoublePrediction:
        per = [self.layer_ms(s) for s in specs]
        return DoublePrediction(total_ms=sum(per) + self.overhead_ms, per_layer_ms=per)


def conv(cin: int, cout: int, hw: int = 8) -> LayerSpec:
    return LayerSpec("conv", cin, cout, kernel=(3, 3), padding=(1, 1), in_hw=(hw, hw), out_hw=(hw, hw))


def separable_graph(widths: list[int], hw: list[int] | None = None) -> DependencyGraph:
    """Each group is the output of one conv fed by the fixed 3-channel input: latency is separable."""
    hw = hw or [8] * len(widths)
    groups = [ChannelGroup(id=f"g{i}", width=w, prunable=True) for i, w in enumerate(widths)]
    layers = [CostedLayer(name=f"conv{i}", spec=conv(3, w, h), in_groups=(), out_group=f"g{i}") for i, (w, h) in enumerate(zip(widths, hw, strict=True))]
    return DependencyGraph(groups=groups, layers=layers, input_shape=(1, 3, 8, 8))


def chain_graph(widths: list[int], classes: int = 10) -> DependencyGraph:
    """input(3) -> conv -> g0 -> conv -> g1 ... -> linear(classes): convs couple two groups."""
    groups = [ChannelGroup(id=f"g{i}", width=w, prunable=True) for i, w in enumerate(widths)]
    layers = [CostedLayer(name="conv0", spec=conv(3, widths[0]), out_group="g0")]
    for i in range(1, len(widths)):
        layers.append(CostedLayer(name=f"conv{i}", spec=conv(widths[i - 1], widths[i]), in_groups=(f"g{i - 1}",), out_group=f"g{i}"))
    last = f"g{len(widths) - 1}"
    layers.append(CostedLayer(name="fc", spec=LayerSpec("linear", widths[-1], classes), in_groups=(last,), out_group=None))
    return DependencyGraph(groups=groups, layers=layers, input_shape=(1, 3, 8, 8))


def random_scores(graph: DependencyGraph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.gamma(2.0, 1.0, g.width) for g in graph.groups}


def brute_force(problem, model) -> tuple[float, dict[str, int]]:  # noqa: ANN001
    """The best retained value over every combination of options that meets the budget."""
    best = (-1.0, {})
    for combo in itertools.product(*[g.options for g in problem.groups]):
        widths = {g.id: k for g, k in zip(problem.groups, combo, strict=True)}
        total = model.predict(problem.graph.layer_specs(widths)).total_ms
        if total <= problem.budget_ms * (1 + 1e-9):
            value = problem.value(widths)
            if value > best[0]:
                best = (value, widths)
    return best
