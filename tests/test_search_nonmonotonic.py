"""Budgets that the all-floors plan misses but a wider plan meets: latency is not monotonic in width."""

from __future__ import annotations

import pytest
from search_models import DoublePrediction, random_scores, separable_graph

from hadmc_deploy.errors import BudgetError
from hadmc_deploy.search import search
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
