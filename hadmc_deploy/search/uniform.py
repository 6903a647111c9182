"""The uniform baseline: every group keeps the same share of its channels (what
Torch-Pruning users do with one global ratio), the largest ratio that meets the budget.

Each group keeps the allowed count nearest to `ratio * width` (never below its
floor). Only finitely many ratios give distinct plans (those where some group's
count changes), so instead of bisecting on a real ratio we walk that sorted
list: a bisection assumes latency grows with the ratio, and measured tables
break that at kernel staircases (on this CPU a 24-channel stem ran slower than
a 32-channel one), where it would stop at a needlessly small ratio.
The walk goes from the widest ratio down and stops at the first that fits: one
prediction per breakpoint at most (a few hundred on a ResNet-50).
"""

from __future__ import annotations

import numpy as np

from hadmc_deploy.search.base import SearchProblem
from hadmc_deploy.ui import UI


def widths_at(problem: SearchProblem, ratio: float) -> dict[str, int]:
    out = dict(problem.full)
    for g in problem.groups:
        opts = np.asarray(g.options)
        target = ratio * g.width
        out[g.id] = int(opts[np.argmin(np.abs(opts - target) - 1e-9 * opts)])  # ties round up
    return out


def uniform(problem: SearchProblem, ui: UI) -> dict[str, int]:
    ratios = sorted({0.0, 1.0, *(k / g.width for g in problem.groups for k in g.options)})
    fits = lambda r: problem.fits(problem.evaluator.total(widths_at(problem, r)))  # noqa: E731
    best = 0.0  # the floors fit (checked before the method runs)
    with ui.progress("uniform ratio scan", len(ratios)) as task:
        for r in reversed(ratios):
            task.advance()
            if fits(r):
                best = r
                break
    return widths_at(problem, best)
