"""The default search: a latency-constrained multiple-choice knapsack over alignment bundles.

Each group keeps its most important channels in order, in bundles of its
alignment (the target's `round_to` times the group's granularity); keeping `k`
channels is one *option* of the group, worth the importance it retains and
costing the latency the predictor gives it. Exactly one option per group is
chosen to maximise the retained importance with the summed cost under the
budget: a multiple-choice knapsack.

Solving it exactly. `solve_mckp` is a dynamic program over Pareto frontiers of
(cost, value) states: after each group only states that no other state beats
on both cost and value survive, and states that cannot get back under the
capacity even with every later group at its cheapest option are dropped. That
is exact for any real-valued costs, including zero and negative ones (a
bundle whose removal makes a layer *slower*, at a kernel's staircase step) -
no discretisation of latency is needed. Only if a frontier grows past
`max_states` is it thinned to the best state per cost bucket (a documented
approximation, reported by the solver; it did not trigger on the demo CNN,
ResNet-20 or ResNet-50 at 8-channel alignment).

Latency is not separable per group: a conv's cost depends on its input group's
width *and* its output group's width. We handle that by iterating:

1. linearise around the current plan: each group's cost curve is the predicted
   change of the layers it touches when only that group moves;
2. solve the knapsack exactly on those curves;
3. price the solution with the full predictor; *repair* it (NetAdapt-style
   shrink steps) until the full prediction meets the budget, then *fill* the
   slack (grow the group with the most importance per ms that still fits);
4. repeat from the repaired plan until it stops changing (at most `max_iter`),
   and return the best plan that meets the budget.

The linearisation is exact for layers touching one group and first-order for
convs between two pruned groups (the cross term makes the linear model
optimistic, which the repair step absorbs).
"""

from __future__ import annotations

import numpy as np

from hadmc_deploy.search.base import SearchProblem
from hadmc_deploy.search.moves import fill, repair
from hadmc_deploy.ui import UI

#: comparison slack on costs (ms): absorbs float noise in summed predictions.
COST_TOL = 1e-9


def solve_mckp(
    costs: list[np.ndarray], values: list[np.ndarray], capacity: float, *, max_states: int = 50_000
) -> tuple[list[int], bool] | None:
    """Pick one option per group maximising total value with total cost <= capacity.

    Returns (option index per group, exact) or None when no choice fits. Ties
    in value go to the cheaper choice.
    """
    n = len(costs)
    mins = np.array([float(np.min(c)) for c in costs])
    # cheapest possible cost of the groups after g (for pruning unreachable states)
    rest = np.concatenate([np.cumsum(mins[::-1])[::-1][1:], [0.0]]) if n else np.zeros(0)
    if n and mins.sum() > capacity + COST_TOL:
        return None
    cost = np.zeros(1)
    value = np.zeros(1)
    parents: list[np.ndarray] = []
    choices: list[np.ndarray] = []
    exact = True
    for g in range(n):
        c = np.asarray(costs[g], dtype=np.float64)
        v = np.asarray(values[g], dtype=np.float64)
        cand_c = (cost[:, None] + c[None, :]).ravel()
        cand_v = (value[:, None] + v[None, :]).ravel()
        parent = np.repeat(np.arange(cost.size), c.size)
        choice = np.tile(np.arange(c.size), cost.size)
        ok = cand_c + rest[g] <= capacity + COST_TOL
        cand_c, cand_v, parent, choice = cand_c[ok], cand_v[ok], parent[ok], choice[ok]
        order = np.lexsort((-cand_v, cand_c))  # cost ascending, then value descending
        cand_c, cand_v, parent, choice = cand_c[order], cand_v[order], parent[order], choice[order]
        running = np.maximum.accumulate(cand_v)
        keep = np.concatenate([[True], cand_v[1:] > running[:-1]])
        cand_c, cand_v, parent, choice = cand_c[keep], cand_v[keep], parent[keep], choice[keep]
        if cand_c.size > max_states:
            exact = False
            span = max(cand_c[-1] - cand_c[0], 1e-12)
            bucket = np.floor((cand_c - cand_c[0]) / span * (max_states - 1)).astype(np.int64)
            # the frontier's values rise with cost, so the last state of a bucket is its best
            last = np.concatenate([bucket[1:] != bucket[:-1], [True]])
            cand_c, cand_v, parent, choice = cand_c[last], cand_v[last], parent[last], choice[last]
        cost, value = cand_c, cand_v
        parents.append(parent)
        choices.append(choice)
    if n == 0:
        return [], True
    best = int(np.argmax(value))
    picked = [0] * n
    for g in range(n - 1, -1, -1):
        picked[g] = int(choices[g][best])
        best = int(parents[g][best])
    return picked, exact


def knapsack(problem: SearchProblem, ui: UI, *, max_iter: int = 8) -> dict[str, int]:
    """Iterated linearise -> exact knapsack -> repair/fill, keeping the best feasible plan."""
    widths = {g.id: g.width for g in problem.groups}
    fixed = {k: v for k, v in problem.full.items() if k not in widths}
    best: tuple[float, dict[str, int]] | None = None
    seen: set[tuple[tuple[str, int], ...]] = set()
    with ui.progress("knapsack search", max_iter) as task:
        for it in range(max_iter):
            current = {**fixed, **widths}
            total = problem.evaluator.total(current)
            changes = [(g.id, k) for g in problem.groups for k in g.options]
            deltas = problem.evaluator.deltas(current, changes)
            costs, values, at = [], [], 0
            for g in problem.groups:
                costs.append(deltas[at : at + len(g.options)])
                values.append(g.values)
                at += len(g.options)
            solved = solve_mckp(costs, values, problem.budget_ms - total)
            if solved is None:  # the linear model thinks nothing fits: start from the floors
                proposal = {g.id: g.options[0] for g in problem.groups}
            else:
                picks, exact = solved
                if not exact:
                    ui.log("knapsack: frontier thinned to its cost buckets (approximate solve)")
                proposal = {g.id: g.options[i] for g, i in zip(problem.groups, picks, strict=True)}
            plan = fill(problem, repair(problem, {**fixed, **proposal}))
            plan_widths = {g.id: plan[g.id] for g in problem.groups}
            if problem.fits(problem.evaluator.total(plan)):
                val = problem.value(plan)
                if best is None or val > best[0] + 1e-12:
                    best = (val, plan_widths)
            task.advance()
            task.update(info=f"iteration {it + 1}: {problem.evaluator.total(plan):.3f} ms, value {problem.value(plan):.1f}")
            key = tuple(sorted(plan_widths.items()))
            if key in seen:
                break
            seen.add(key)
            widths = plan_widths
    if best is None:  # once check_reachable passed, the floors or its feasible start fit
        start = problem.feasible_start or {**fixed, **{g.id: g.options[0] for g in problem.groups}}
        return fill(problem, start)
    return {**fixed, **best[1]}
