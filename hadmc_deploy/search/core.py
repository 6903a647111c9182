"""The latency-constrained width search over a `SearchProblem` (knapsack, greedy, uniform).

`search()` in the package adds the learned policies (`rl/`), which build on this module.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hadmc_deploy.errors import BudgetError, UsageError
from hadmc_deploy.graph.align import group_step
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.search.base import (
    GroupChange,
    LatencyEvaluator,
    LatencyPredictor,
    SearchMethod,
    SearchProblem,
    SearchResult,
    check_reachable,
    group_options,
    resolve_budget,
)
from hadmc_deploy.search.greedy import greedy
from hadmc_deploy.search.knapsack import knapsack
from hadmc_deploy.search.moves import fill
from hadmc_deploy.search.uniform import uniform
from hadmc_deploy.ui import UI, quiet_ui

#: method name -> function(problem, ui) -> widths. A registry, not an if-chain.
METHODS: Mapping[str, SearchMethod] = {"knapsack": knapsack, "greedy": greedy, "uniform": uniform}
#: learned policies: they need the model and validation data, not just the search problem.
RL_METHOD_NAMES = ("amc", "ppo")
ALL_METHODS = (*METHODS, *RL_METHOD_NAMES)

#: by default no group keeps fewer than this share of its channels: the knapsack otherwise
#: happily thins one expensive layer to a bottleneck that recovery struggles to repair.
DEFAULT_MIN_KEEP_RATIO = 0.25

def build_problem(
    graph: DependencyGraph,
    scores: Mapping[str, np.ndarray],
    latency_model: LatencyPredictor,
    *,
    speedup: float | None = None,
    latency_ms: float | None = None,
    round_to: int = 1,
    min_keep_ratio: float = DEFAULT_MIN_KEEP_RATIO,
    importance_norm: str = "mean",
) -> tuple[SearchProblem, list[str]]:
    if round_to < 1:
        raise UsageError(f"round_to must be >= 1, got {round_to}")
    if not 0.0 <= min_keep_ratio <= 1.0:
        raise UsageError(f"--min-keep-ratio {min_keep_ratio} must lie in [0, 1]")
    notes: list[str] = []
    evaluator = LatencyEvaluator(graph, latency_model)
    full = graph.full_widths()
    baseline = evaluator.total(full)
    budget = resolve_budget(baseline, speedup, latency_ms)
    producers: dict[str, int] = {}
    for layer in graph.layers:
        if layer.out_group is not None and layer.spec.op in ("conv", "gconv", "dwconv", "convtranspose", "linear"):
            producers[layer.out_group] = producers.get(layer.out_group, 0) + 1
    groups = []
    for g in graph.prunable_groups:
        group_scores = scores.get(g.id)
        if group_scores is None:
            notes.append(f"group {g.id} had no importance scores; its channels were ranked as equal")
            group_scores = np.ones(g.width)
        opts = group_options(
            g.id,
            g.width,
            np.asarray(group_scores),
            # the graph's rule: lcm(round_to, granularity), or just the granularity for a
            # group too narrow to hold two aligned steps (surgery checks the same rule)
            step=group_step(g, round_to),
            min_width=g.min_width,
            min_keep_ratio=min_keep_ratio,
            producers=producers.get(g.id, 1),
            importance_norm=importance_norm,
        )
        if len(opts.options) > 1:
            groups.append(opts)
    problem = SearchProblem(graph=graph, groups=groups, evaluator=evaluator, baseline_ms=baseline, budget_ms=budget, full=full)
    return problem, notes


def classic_search(
    graph: DependencyGraph,
    scores: Mapping[str, np.ndarray],
    latency_model: LatencyPredictor,
    *,
    method: str = "knapsack",
    speedup: float | None = None,
    latency_ms: float | None = None,
    round_to: int = 1,
    min_keep_ratio: float = DEFAULT_MIN_KEEP_RATIO,
    importance_norm: str = "mean",
    ui: UI | None = None,
) -> SearchResult:
    """Choose kept widths so the predicted latency meets the budget with the most importance kept.

    Raises BudgetError (naming the best reachable speedup) when the budget
    cannot be met with every group at its floor.
    """
    ui = ui or quiet_ui()
    if method not in METHODS:
        raise UsageError(f"unknown search method {method!r}", hint=f"choose one of {', '.join(ALL_METHODS)}")
    problem, notes = build_problem(
        graph, scores, latency_model, speedup=speedup, latency_ms=latency_ms, round_to=round_to,
        min_keep_ratio=min_keep_ratio, importance_norm=importance_norm,
    )
    if problem.fits(problem.baseline_ms):
        notes.append("the unpruned model already meets the budget; nothing was pruned")
        widths = dict(problem.full)
    else:
        if not problem.groups:
            raise BudgetError(
                f"the budget {problem.budget_ms:.3f} ms cannot be met: no group can be pruned "
                f"(the model is predicted at {problem.baseline_ms:.3f} ms, a best reachable speedup of 1.00x)",
                hint="check `hadmc-deploy inspect` for why the groups are not prunable",
            )
        check_reachable(problem)
        widths = METHODS[method](problem, ui)
        if method in GROWN_FROM_STARTS:  # also grows past a plan that stopped above the budget
            widths = _most_importance(problem, widths, method, notes)
        elif not problem.fits(problem.evaluator.total(widths)) and problem.feasible_starts:
            # the method stopped above the budget (it walked down to floors that miss it, or no
            # single cut lowered the prediction any more): grow from a plan check_reachable found
            # within the budget instead
            notes.append(f"{method}: its plan missed the budget; the plan was grown from the fastest plan found within it")
            widths = fill(problem, problem.feasible_starts[0])
    predicted = problem.evaluator.total(widths)
    if not problem.fits(predicted):  # a method bug, never a user problem: say so loudly
        raise BudgetError(f"the {method} search ended at {predicted:.3f} ms over the budget {problem.budget_ms:.3f} ms")
    return _result(problem, widths, predicted, method, notes, round_to)


#: methods whose plan competes with the plans grown from check_reachable's feasible starts
#: ("uniform" keeps its meaning: one ratio for every group).
GROWN_FROM_STARTS = ("knapsack", "greedy")


def _most_importance(problem: SearchProblem, widths: dict[str, int], method: str, notes: list[str]) -> dict[str, int]:
    """The method's plan, or a plan grown (`fill`) from one of the feasible starts where that
    retains more importance within the budget. Why: where cutting one group changes what its
    neighbours cost (a conv runs blocked only with both its counts on the step), the linearised
    knapsack can end far from the best plan, and a looser budget kept less importance than a
    tighter one (a MobileNetV2 INT8 table on an AMD EPYC: 62% at 1.10x, 51% at 1.15x, 70% at
    1.20x; with this, 95%, 92%, 85%). On a ResNet-18 INT8 table at 224 it added 0.3-3.2 points
    of importance at 1.5-3x; the search took 0.6-1.8 s instead of 0.1-1.0 s."""
    fits = problem.fits(problem.evaluator.total(widths))
    best, best_value = widths, problem.value(widths) if fits else -np.inf
    for start in problem.feasible_starts:
        grown = fill(problem, start)
        value = problem.value(grown)
        if value > best_value + 1e-9 and problem.fits(problem.evaluator.total(grown)):
            best, best_value = grown, value
    if best is not widths and not fits:
        notes.append(f"{method}: its plan missed the budget; the plan was grown from a fast plan found within it")
    elif best is not widths:
        grown_share, own_share = best_value / problem.total_value(), problem.value(widths) / problem.total_value()
        digits = 1 if f"{grown_share:.1%}" != f"{own_share:.1%}" else 4  # "85.0% vs 85.0%" read as no gain
        notes.append(f"{method}: a plan grown from another fast plan keeps more importance within the budget ({grown_share:.{digits}%} "
                     f"vs {own_share:.{digits}%}); it is the plan")
    return best


def _result(problem: SearchProblem, widths: dict[str, int], predicted: float, method: str, notes: list[str], round_to: int) -> SearchResult:
    changes: list[GroupChange] = []
    keep: dict[str, int] = {}
    indices: dict[str, list[int]] = {}
    for g in problem.groups:
        k = widths[g.id]
        keep[g.id] = k
        saved = float(problem.evaluator.deltas(widths, [(g.id, g.width)])[0]) if k != g.width else 0.0
        changes.append(GroupChange(id=g.id, before=g.width, after=k, saved_ms=saved, importance_kept=g.value_of(k) / max(g.values[-1], 1e-12)))
        if k < g.width and not problem.graph.group(g.id).cells:
            # groups with cells (grouped convs, GroupNorm) keep channels per cell: surgery picks those
            indices[g.id] = sorted(int(i) for i in g.order[:k])
    total_value = problem.total_value()
    plan = WidthPlan(
        keep=keep,
        indices=indices,
        meta={
            "method": method,
            "baseline_ms": problem.baseline_ms,
            "predicted_ms": predicted,
            "budget_ms": problem.budget_ms,
            "latency_source": problem.evaluator.source,
            "round_to": round_to,
        },
    )
    return SearchResult(
        plan=plan,
        predicted_ms=predicted,
        baseline_ms=problem.baseline_ms,
        budget_ms=problem.budget_ms,
        method=method,
        source=problem.evaluator.source,
        changes=changes,
        importance_kept=problem.value(widths) / total_value if total_value > 0 else 1.0,
        predictor_calls=problem.evaluator.calls,
        notes=notes,
    )
