"""Latency-constrained width search: which channels to keep so the model meets a budget.

`search(graph, scores, latency_model, method=..., speedup=... | latency_ms=...)`
builds a `SearchProblem` (per-group kept-count options on the target's
alignment, above each group's floor, with the importance each retains), runs
one method from `METHODS`, checks the result with the full predictor and
returns a `SearchResult` whose `plan` the surgery applies.

Methods: `knapsack` (default; exact multiple-choice knapsack, iterated over
the non-separable latency, see knapsack.py), `greedy` (NetAdapt-style) and
`uniform` (one ratio everywhere, the baseline reports compare against).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.search.base import GroupChange, LatencyPredictor, SearchProblem, SearchResult
from hadmc_deploy.search.core import (
    ALL_METHODS,
    DEFAULT_MIN_KEEP_RATIO,
    METHODS,
    RL_METHOD_NAMES,
    build_problem,
    classic_search,
)
from hadmc_deploy.search.knapsack import solve_mckp
from hadmc_deploy.search.rl import rl_search
from hadmc_deploy.ui import UI

__all__ = [
    "ALL_METHODS",
    "DEFAULT_MIN_KEEP_RATIO",
    "METHODS",
    "GroupChange",
    "SearchProblem",
    "SearchResult",
    "build_problem",
    "search",
    "solve_mckp",
]


def search(
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
    rl_options: Mapping[str, Any] | None = None,
    ui: UI | None = None,
) -> SearchResult:
    """Choose kept widths so the predicted latency meets the budget with the most importance kept.

    Raises BudgetError (naming the best reachable speedup) when the budget cannot be met.
    `amc` and `ppo` (learned policies, `search/rl/`) need the model and data, passed in `rl_options`.
    """
    if method in RL_METHOD_NAMES:
        return rl_search(
            graph, scores, latency_model, method=method, speedup=speedup, latency_ms=latency_ms,
            round_to=round_to, min_keep_ratio=min_keep_ratio, ui=ui, **dict(rl_options or {}),
        )
    return classic_search(
        graph, scores, latency_model, method=method, speedup=speedup, latency_ms=latency_ms,
        round_to=round_to, min_keep_ratio=min_keep_ratio, importance_norm=importance_norm, ui=ui,
    )
