"""Budgets that the all-floors plan misses but a wider plan meets: latency is not monotonic in width."""

from __future__ import annotations

import pytest
from search_models import DoublePrediction, chain_graph, conv, random_scores, separable_graph

from hadmc_deploy.errors import BudgetError
from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph
from hadmc_deploy.search import search
from hadmc_deploy.search.base import _descend, check_reachable, fastest_plan
from hadmc_deploy.search.core import _most_importance, build_problem
from hadmc_deploy.specs import LayerSpec


class NarrowIsSlowDouble:
    """TEST DOUBLE of LatencyModel: MAC-proportional, but layers under 24 output channels
    cost an extra 0.5 ms each (like narrow INT8 kernels measured slower here)."""

    def predict(self, specs: list[LayerSpec]) -> DoublePrediction:
        per = [s.macs() * 1e-5 + (0.5 if s.out_channels < 24 else 0.0) for s in specs]
        return DoublePrediction(total_ms=sum(per), per_layer_ms=per)


@pytest.mark.parametrize("method", ["knapsack", "greedy", "uniform"])
def test_budget_between_floor_and_fastest_plan_is_met(method):
    graph = separable_graph([64, 64, 64])
    model = NarrowIsSlowDouble()
    baseline = model.predict(graph.layer_specs()).total_ms
    floors = model.predict(graph.layer_specs({"g0": 16, "g1": 16, "g2": 16})).total_ms
    fastest = model.predict(graph.layer_specs({"g0": 24, "g1": 24, "g2": 24})).total_ms
    assert fastest < baseline / 1.6 < floors  # the case: the floors miss, a wider plan fits
    result = search(graph, random_scores(graph), model, method=method, speedup=1.6, round_to=8)
    assert result.predicted_ms <= baseline / 1.6 * (1 + 1e-6)


def test_unreachable_budget_names_the_fastest_plan_not_the_floors():
    graph = separable_graph([64, 64, 64])
    model = NarrowIsSlowDouble()
    baseline = model.predict(graph.layer_specs()).total_ms
    fastest = model.predict(graph.layer_specs({"g0": 24, "g1": 24, "g2": 24})).total_ms
    with pytest.raises(BudgetError, match=f"best reachable speedup of {baseline / fastest:.2f}x") as info:
        search(graph, random_scores(graph), model, method="knapsack", speedup=5.0, round_to=8)
    assert info.value.best_speedup == pytest.approx(baseline / fastest)


class BlockedLayoutDouble:
    """TEST DOUBLE of LatencyModel for ONNX Runtime's blocked layout: a conv whose input and output
    counts are both multiples of 16 (or the 3-channel image) costs its MACs; any other costs 3x
    that plus 0.2 ms (layout reorders), like the in-context tables of an AVX-512 CPU (x3.26 measured
    off the step)."""

    def predict(self, specs: list[LayerSpec]) -> DoublePrediction:
        def on_step(s: LayerSpec) -> bool:
            return all(n % 16 == 0 or n == 3 for n in (s.in_channels, s.out_channels))
        per = [s.macs() * 1e-6 * (1.0 if on_step(s) else 3.0) + (0.0 if on_step(s) else 0.2) for s in specs]
        return DoublePrediction(total_ms=sum(per), per_layer_ms=per)


def residual_graph(blocks: int = 3) -> DependencyGraph:
    """A residual stage of 16 channels (group A, every block's output added to it), each block's
    inner 16 channels a group of its own, then a 64-channel layer: ResNet-20's first stage."""
    groups = [ChannelGroup(id="A", width=16, prunable=True), *(ChannelGroup(id=f"B{i}", width=16, prunable=True) for i in range(blocks)),
              ChannelGroup(id="C", width=64, prunable=True)]
    layers = [CostedLayer(name="stem", spec=conv(3, 16), out_group="A")]
    for i in range(blocks):
        layers.append(CostedLayer(name=f"in{i}", spec=conv(16, 16), in_groups=("A",), out_group=f"B{i}"))
        layers.append(CostedLayer(name=f"out{i}", spec=conv(16, 16), in_groups=(f"B{i}",), out_group="A"))
    layers.append(CostedLayer(name="down", spec=conv(16, 64), in_groups=("A",), out_group="C"))
    layers.append(CostedLayer(name="fc", spec=LayerSpec("linear", 64, 10), in_groups=("C",), out_group=None))
    return DependencyGraph(groups=groups, layers=layers, input_shape=(1, 3, 8, 8))


def test_the_fastest_plan_is_not_trapped_off_the_step():
    """Groups of 16 may take any count from 4 (narrower than two steps), so the floors leave them off
    the step, and a conv between the residual group and a block's group pays until both move, which
    no single group's move does. Descent from the floors alone ended slower than the original (a
    ResNet-20 INT8 table on an AMD EPYC: 0.78x); the reachability check must find the 64-channel
    group's savings with the rest on the step."""
    graph = residual_graph()
    model = BlockedLayoutDouble()
    baseline = model.predict(graph.layer_specs()).total_ms
    problem, _ = build_problem(graph, random_scores(graph), model, speedup=1.1, round_to=16)
    floors = {**problem.full, **problem.floors()}
    assert problem.evaluator.total(floors) > baseline  # the trap: the floors run slower than the original
    assert _descend(problem, floors, 3)[1] > baseline  # and descent from them alone stays there
    widths, fastest = fastest_plan(problem)
    assert fastest < baseline / 1.1 and fastest == pytest.approx(problem.evaluator.total(widths))
    result = search(graph, random_scores(graph), model, method="knapsack", speedup=1.1, round_to=16)
    assert result.predicted_ms <= baseline / 1.1 * (1 + 1e-6)


def test_a_model_pruning_cannot_speed_up_says_so():
    graph = chain_graph([16, 16, 16])  # every group narrower than two steps: every cut leaves the step
    with pytest.raises(BudgetError, match="no plan found within the width floors is predicted faster than the original") as info:
        search(graph, random_scores(graph), BlockedLayoutDouble(), method="knapsack", speedup=1.2, round_to=16)
    assert info.value.best_speedup == pytest.approx(1.0) and "--speedup" not in (info.value.hint or "")


def test_the_plan_is_the_one_that_keeps_the_most_importance_within_the_budget():
    """The method's plan competes with every feasible start grown back into the budget: a plan that
    keeps less importance (here the floors themselves) loses to the floors grown, within the budget.
    On a MobileNetV2 INT8 table of an AMD EPYC the knapsack alone kept 51% at 1.15x and 70% at 1.2x;
    with its plan competing so, 92% and 85%."""
    graph = separable_graph([64, 64, 64])
    model = NarrowIsSlowDouble()
    problem, notes = build_problem(graph, random_scores(graph), model, speedup=1.3, round_to=8)
    check_reachable(problem)
    floors = {**problem.full, **problem.floors()}
    assert problem.feasible_starts and all(problem.fits(problem.evaluator.total(w)) for w in problem.feasible_starts)
    chosen = _most_importance(problem, floors, "knapsack", notes)
    assert problem.fits(problem.evaluator.total(chosen)) and problem.value(chosen) > problem.value(floors)
    assert "keeps more importance" in notes[-1]
    assert _most_importance(problem, chosen, "knapsack", []) == chosen  # nothing better: the plan stays
