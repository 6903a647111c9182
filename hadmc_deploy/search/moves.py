"""Single-group moves priced with the full predictor: shrink to meet a budget, grow into slack.

The greedy method is a loop of `shrink_step`; the knapsack method uses both to
turn the solution of its linearised problem into a plan whose *full*
prediction meets the budget (repair) and leaves no affordable bundle unused (fill).
"""

from __future__ import annotations

import numpy as np

from hadmc_deploy.search.base import SearchProblem

#: a move must save at least this much (ms) to count as a saving (float noise).
EPS_MS = 1e-12


def shrink_step(problem: SearchProblem, widths: dict[str, int]) -> tuple[str, int] | None:
    """NetAdapt's step: per group, the smallest reduction that lowers predicted latency;
    of those, the one that loses the least importance per millisecond saved."""
    changes = [(g.id, k) for g in problem.groups for k in g.options if k < widths[g.id]]
    if not changes:
        return None
    deltas = problem.evaluator.deltas(widths, changes)
    by_group: dict[str, list[tuple[int, float]]] = {}
    for (gid, k), d in zip(changes, deltas, strict=True):
        by_group.setdefault(gid, []).append((k, float(d)))
    best: tuple[float, str, int] | None = None
    for g in problem.groups:
        cands = sorted(by_group.get(g.id, []), key=lambda kd: -kd[0])  # one bundle less first
        now_value = g.value_of(widths[g.id])
        for k, d in cands:
            if -d > EPS_MS:
                ratio = (now_value - g.value_of(k)) / -d
                if best is None or ratio < best[0]:
                    best = (ratio, g.id, k)
                break
    return None if best is None else (best[1], best[2])


def repair(problem: SearchProblem, widths: dict[str, int]) -> dict[str, int]:
    """Shrink until the full prediction meets the budget (or nothing can shrink)."""
    widths = dict(widths)
    while not problem.fits(problem.evaluator.total(widths)):
        move = shrink_step(problem, widths)
        if move is None:
            break
        widths[move[0]] = move[1]
    return widths


def fill(problem: SearchProblem, widths: dict[str, int]) -> dict[str, int]:
    """Grow groups back while the budget allows: free or negative-cost bundles first,
    then the most importance per millisecond added. Each step is checked with the
    full predictor, so the result still meets the budget."""
    widths = dict(widths)
    rejected: set[tuple[str, int, tuple[tuple[str, int], ...]]] = set()
    while True:
        total = problem.evaluator.total(widths)
        slack = problem.budget_ms * (1 + 1e-9) - total
        changes = [(g.id, k) for g in problem.groups for k in g.options if k > widths[g.id]]
        if not changes:
            return widths
        deltas = problem.evaluator.deltas(widths, changes)
        state = tuple(sorted(widths.items()))
        by_id = {g.id: g for g in problem.groups}
        ranked: list[tuple[float, float, str, int]] = []
        for (gid, k), d in zip(changes, deltas, strict=True):
            if d > slack or (gid, k, state) in rejected:
                continue
            gain = by_id[gid].value_of(k) - by_id[gid].value_of(widths[gid])
            if gain <= 0:
                continue
            # Free (or latency-lowering) bundles rank above any paid one.
            score = np.inf if d <= EPS_MS else gain / d
            ranked.append((score, gain, gid, k))
        if not ranked:
            return widths
        ranked.sort(key=lambda t: (-t[0], -t[1], t[2], t[3]))
        _, _, gid, k = ranked[0]
        trial = {**widths, gid: k}
        if problem.fits(problem.evaluator.total(trial)):
            widths = trial
        else:
            rejected.add((gid, k, state))

