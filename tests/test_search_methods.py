"""Width search on synthetic graphs priced by a latency TEST DOUBLE (tests/search_models.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from search_models import MacLatencyDouble, brute_force, chain_graph, random_scores, separable_graph

from hadmc_deploy.errors import BudgetError, UsageError
from hadmc_deploy.graph.types import ChannelGroup
from hadmc_deploy.search import build_problem, search, solve_mckp
from hadmc_deploy.ui import UI


# -- the exact solver ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_solve_mckp_matches_brute_force_including_negative_costs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(1, 5))
    costs = [rng.normal(0.0, 1.0, int(rng.integers(1, 5))) for _ in range(n_groups)]  # negative costs included
    values = [np.sort(rng.uniform(0, 5, c.size)) for c in costs]
    capacity = float(rng.uniform(-1.0, 2.0))
    best = None
    for combo in itertools.product(*[range(c.size) for c in costs]):
        cost = sum(c[i] for c, i in zip(costs, combo, strict=True))
        value = sum(v[i] for v, i in zip(values, combo, strict=True))
        if cost <= capacity + 1e-9 and (best is None or value > best + 1e-12):
            best = value
    solved = solve_mckp(costs, values, capacity)
    if best is None:
        assert solved is None
        return
    assert solved is not None
    picks, exact = solved
    assert exact
    assert sum(c[i] for c, i in zip(costs, picks, strict=True)) <= capacity + 1e-9
    assert sum(v[i] for v, i in zip(values, picks, strict=True)) == pytest.approx(best)


def test_solve_mckp_thinning_is_reported_as_approximate() -> None:
    rng = np.random.default_rng(0)
    costs = [rng.uniform(0, 1, 8) for _ in range(6)]
    values = [np.sort(rng.uniform(0, 1, 8)) for _ in range(6)]
    picks, exact = solve_mckp(costs, values, 3.0, max_states=16)
    assert not exact
    assert sum(c[i] for c, i in zip(costs, picks, strict=True)) <= 3.0 + 1e-9


# -- knapsack on separable latency: optimal ------------------------------------------------------
@pytest.mark.parametrize("speedup", [1.3, 1.8, 2.5])
def test_knapsack_is_optimal_on_separable_latency(speedup: float) -> None:
    graph = separable_graph([32, 24, 16, 40], hw=[8, 6, 10, 4])
    scores = random_scores(graph, seed=1)
    model = MacLatencyDouble()
    problem, _ = build_problem(graph, scores, model, speedup=speedup, round_to=8)
    best_value, _ = brute_force(problem, model)
    result = search(graph, scores, model, method="knapsack", speedup=speedup, round_to=8)
    assert result.predicted_ms <= result.baseline_ms / speedup * (1 + 1e-9)
    assert problem.value(result.plan.keep) == pytest.approx(best_value)


def test_knapsack_near_optimal_on_coupled_chain_and_beats_baselines() -> None:
    graph = chain_graph([32, 32, 48, 24])
    scores = random_scores(graph, seed=3)
    model = MacLatencyDouble()
    problem, _ = build_problem(graph, scores, model, speedup=2.0, round_to=8)
    best_value, _ = brute_force(problem, model)
    values = {}
    for method in ("knapsack", "greedy", "uniform"):
        result = search(graph, scores, model, method=method, speedup=2.0, round_to=8)
        assert result.predicted_ms <= result.budget_ms * (1 + 1e-9)
        values[method] = problem.value(result.plan.keep)
    assert values["knapsack"] >= 0.98 * best_value
    assert values["knapsack"] >= values["greedy"] - 1e-9
    assert values["knapsack"] >= values["uniform"] - 1e-9


# -- constraints -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["knapsack", "greedy", "uniform"])
def test_floors_and_alignment_respected(method: str) -> None:
    graph = chain_graph([64, 48, 96])
    graph.groups[1] = ChannelGroup(id="g1", width=48, prunable=True, granularity=3, min_width=20)
    scores = random_scores(graph, seed=2)
    result = search(graph, scores, MacLatencyDouble(), method=method, speedup=3.0, round_to=8, min_keep_ratio=0.25)
    keep = result.plan.keep
    assert keep["g0"] % 8 == 0 and keep["g0"] >= 16
    assert keep["g1"] % 24 == 0 and keep["g1"] >= 20  # lcm(granularity 3, round_to 8) = 24
    assert keep["g2"] % 8 == 0 and keep["g2"] >= 24
    for gid, k in keep.items():
        if k < graph.group(gid).width:
            idx = result.plan.indices[gid]
            assert len(idx) == k and idx == sorted(idx)
            # the kept channels are the most important ones
            s = scores[gid]
            assert min(s[idx]) >= max(np.delete(s, idx)) - 1e-12


def test_unprunable_groups_keep_their_width() -> None:
    graph = chain_graph([32, 32, 32])
    graph.groups[1] = ChannelGroup(id="g1", width=32, prunable=False, reason="output of a concat with the input")
    result = search(graph, random_scores(graph), MacLatencyDouble(), speedup=1.5, round_to=4)
    assert "g1" not in result.plan.keep
    assert result.predicted_ms <= result.budget_ms * (1 + 1e-9)


def test_negative_cost_bundles_are_skipped_by_knapsack() -> None:
    """On a staircase (widths off multiples of 16 cost a penalty) 56 channels are slower
    than 64, so the knapsack never stops there; it jumps to 48 or keeps 64."""
    graph = separable_graph([64, 64])
    scores = random_scores(graph, seed=5)
    model = MacLatencyDouble(stair=16, penalty_ms=0.05)
    problem, _ = build_problem(graph, scores, model, speedup=1.05, round_to=8)
    d = problem.evaluator.deltas(graph.full_widths(), [("g0", 56)])[0]
    assert d > 0  # removing one bundle costs latency here
    result = search(graph, scores, model, method="knapsack", speedup=1.05, round_to=8)
    assert all(k % 16 == 0 for k in result.plan.keep.values())
    best_value, _ = brute_force(problem, model)
    assert problem.value(result.plan.keep) == pytest.approx(best_value)


def test_greedy_removes_cheapest_importance_per_ms_first() -> None:
    # g0 sits at high resolution (expensive); equal importance: greedy must shrink g0 first.
    graph = separable_graph([32, 32], hw=[16, 4])
    scores = {"g0": np.ones(32), "g1": np.ones(32)}
    result = search(graph, scores, MacLatencyDouble(), method="greedy", speedup=1.2, round_to=8)
    assert result.plan.keep["g0"] < 32 and result.plan.keep["g1"] == 32


def test_uniform_uses_one_ratio() -> None:
    graph = chain_graph([64, 64, 64, 64])
    result = search(graph, random_scores(graph), MacLatencyDouble(), method="uniform", speedup=2.0, round_to=8)
    assert len(set(result.plan.keep.values())) == 1
    # and it is the widest uniform plan that fits: one bundle more everywhere breaks the budget
    k = next(iter(result.plan.keep.values()))
    wider = {gid: k + 8 for gid in result.plan.keep}
    assert MacLatencyDouble().predict(graph.layer_specs(wider)).total_ms > result.budget_ms


def test_latency_ms_budget_and_plan_table(capsys: pytest.CaptureFixture[str]) -> None:
    graph = chain_graph([32, 32])
    model = MacLatencyDouble()
    base = model.predict(graph.layer_specs()).total_ms
    result = search(graph, random_scores(graph), model, latency_ms=base * 0.6, round_to=4)
    assert result.predicted_ms <= base * 0.6 + 1e-12
    result.print_plan(UI(quiet=False))
    out = capsys.readouterr().out
    assert "32 -> " in out and "saved (ms)" in out and "test-double" in out


def test_unreachable_budget_names_best_speedup() -> None:
    graph = chain_graph([32, 32])
    with pytest.raises(BudgetError, match=r"best reachable speedup of \d+\.\d+x"):
        search(graph, random_scores(graph), MacLatencyDouble(overhead_ms=0.5), speedup=50, round_to=8)


def test_no_budget_or_both_is_a_usage_error() -> None:
    graph = chain_graph([32])
    with pytest.raises(UsageError):
        search(graph, random_scores(graph), MacLatencyDouble())
    with pytest.raises(UsageError):
        search(graph, random_scores(graph), MacLatencyDouble(), speedup=2, latency_ms=1.0)
    with pytest.raises(UsageError):
        search(graph, random_scores(graph), MacLatencyDouble(), speedup=2, method="random")


def test_loose_budget_prunes_nothing() -> None:
    graph = chain_graph([32, 32])
    result = search(graph, random_scores(graph), MacLatencyDouble(), speedup=1.0, round_to=8)
    assert result.plan.keep == {"g0": 32, "g1": 32}
    assert any("nothing was pruned" in n for n in result.notes)


def test_a_group_offers_the_search_a_bounded_number_of_aligned_counts():
    """Step 1 (no staircase measured) on a 512-wide group: at most MAX_GROUP_OPTIONS counts, still
    multiples of the step, from the floor to the full width (the search's cost grows with their square)."""
    import numpy as np

    from hadmc_deploy.search.base import MAX_GROUP_OPTIONS, group_options

    for step in (1, 3, 16):
        g = group_options("g", 512, np.linspace(1.0, 2.0, 512), step=step, min_width=1, min_keep_ratio=0.25, producers=1, importance_norm="mean")
        assert len(g.options) <= MAX_GROUP_OPTIONS and g.options[-1] == 512 and g.options[0] == g.floor
        assert all(k % step == 0 for k in g.options[:-1]) and g.options == sorted(set(g.options))
    narrow = group_options("n", 64, np.ones(64), step=4, min_width=1, min_keep_ratio=0.25, producers=1, importance_norm="mean")
    assert narrow.options == list(range(16, 65, 4))  # within the bound: every aligned count, as before
