"""NetAdapt-style greedy search (Yang et al. 2018), the latency-aware baseline.

From the full model, repeatedly shrink the one group whose smallest
latency-lowering reduction loses the least importance per millisecond saved,
re-pricing with the predictor after every step, until the budget holds. It
never grows a group back, which is exactly what the knapsack's global view
improves on.
"""

from __future__ import annotations

from hadmc_deploy.search.base import SearchProblem
from hadmc_deploy.search.moves import shrink_step
from hadmc_deploy.ui import UI


def greedy(problem: SearchProblem, ui: UI) -> dict[str, int]:
    widths = dict(problem.full)
    removable = sum(len(g.options) - 1 for g in problem.groups)
    with ui.progress("greedy search", removable) as task:
        while not problem.fits(problem.evaluator.total(widths)):
            move = shrink_step(problem, widths)
            if move is None:
                break
            widths[move[0]] = move[1]
            task.advance()
            task.update(info=f"{problem.evaluator.total(widths):.3f} ms (budget {problem.budget_ms:.3f})")
    return widths
