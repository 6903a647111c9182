"""`rl_search`: the `amc` and `ppo` searches behind the same call and result as every other search.

The search package's `METHODS` registry holds functions of a `SearchProblem`
only; an RL search also needs what its reward needs (the model and validation
data) plus an episode budget and a seed, so it cannot live in that dict without
hidden state. `rl_search` takes `search()`'s arguments plus those, builds the
very same `SearchProblem` (same per-group width options and floors as the
knapsack, via `build_problem`), trains the agent on it, and returns a
`SearchResult` in the same form, so surgery, recovery, export and the backends
treat its plan like any other. The precision plan (joint `ppo`) rides along in
`plan.meta["precision"]` (costed-layer name -> "int8" | float precision).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import UsageError
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.search.base import GroupChange, SearchResult, check_reachable
from hadmc_deploy.search.core import DEFAULT_MIN_KEEP_RATIO, build_problem
from hadmc_deploy.search.core import classic_search as search
from hadmc_deploy.search.rl.ddpg import DDPGConfig
from hadmc_deploy.search.rl.env import RewardFn
from hadmc_deploy.search.rl.ppo import PPOConfig
from hadmc_deploy.search.rl.reward import AccuracyReward
from hadmc_deploy.search.rl.runner import AGENTS, RLSearchOutcome, run_rl_search
from hadmc_deploy.ui import UI, quiet_ui

#: the search names this package answers to (`--search amc|ppo`).
RL_METHODS = AGENTS


def rl_search(
    graph: DependencyGraph,
    scores: Mapping[str, np.ndarray],
    latency_model: Any,
    *,
    method: str = "amc",
    speedup: float | None = None,
    latency_ms: float | None = None,
    round_to: int = 1,
    min_keep_ratio: float = DEFAULT_MIN_KEEP_RATIO,
    model: nn.Module | None = None,
    val_data: ArrayDataset | None = None,
    calib_data: ArrayDataset | None = None,
    val_samples: int = 500,
    recal_batches: int = 4,
    reward: RewardFn | None = None,
    episodes: int = 60,
    seed: int = 0,
    precisions: tuple[str, ...] = (),
    latency_weight: float = 0.0,
    ddpg: DDPGConfig | None = None,
    ppo: PPOConfig | None = None,
    ui: UI | None = None,
) -> SearchResult:
    """Train the `method` agent and return its best plan as a `SearchResult`.

    The reward is the candidate's accuracy on `val_samples` of `val_data`
    after BatchNorm recalibration on `calib_data` (the training data; when it is
    missing, a disjoint part of `val_data` is used), unless `reward` is given.
    `precisions=("fp32", "int8")` makes `ppo` joint (pruning + quantization agents).
    """
    ui = ui or quiet_ui()
    if method not in RL_METHODS:
        raise UsageError(f"unknown RL search {method!r}", hint=f"choose one of {', '.join(RL_METHODS)}")
    problem, notes = build_problem(graph, scores, latency_model, speedup=speedup, latency_ms=latency_ms, round_to=round_to, min_keep_ratio=min_keep_ratio)
    if problem.fits(problem.baseline_ms) or not problem.groups:
        # nothing to decide: the knapsack path reports it (or the unreachable budget) the usual way
        return search(graph, scores, latency_model, method="knapsack", speedup=speedup, latency_ms=latency_ms, round_to=round_to, min_keep_ratio=min_keep_ratio, ui=ui)
    if len(precisions) < 2:  # joint: the environment checks the floors at their cheapest precision
        check_reachable(problem)
    if reward is None:
        reward = _accuracy_reward(graph, scores, problem, model, val_data, calib_data, val_samples, recal_batches, seed)
        notes.append(f"reward: top-1 accuracy on {min(val_samples, len(val_data))} validation samples after BN recalibration, no fine-tuning")  # type: ignore[arg-type]

    def fallback() -> tuple[Any, float]:
        result = search(graph, scores, latency_model, method="knapsack", speedup=speedup, latency_ms=latency_ms, round_to=round_to, min_keep_ratio=min_keep_ratio, ui=ui)
        return result.plan, result.predicted_ms

    options = {g.id: list(g.options) for g in problem.groups}
    outcome = run_rl_search(
        graph, dict(scores), latency_model, reward, agent=method, speedup=speedup, latency_ms=latency_ms,
        episodes=episodes, seed=seed, precisions=precisions, latency_weight=latency_weight,
        ddpg=ddpg, ppo=ppo, options=options, fallback=fallback, ui=ui,
    )
    return _to_result(problem, outcome, method, notes, round_to)


def _accuracy_reward(graph, scores, problem, model, val_data, calib_data, val_samples, recal_batches, seed) -> AccuracyReward:  # noqa: ANN001
    if model is None or val_data is None:
        raise UsageError("the RL searches score each candidate by its validation accuracy, so they need the model and data", hint="pass --eval DATA (and --train DATA for BN recalibration)")
    val = val_data.subset(val_samples + (0 if calib_data is not None else 512), seed=seed)
    if calib_data is None:  # keep the recalibration batches apart from the samples we score on
        calib_data = ArrayDataset(val.x[:512], val.y[:512], f"{val.source}[recal]", val.preprocess)
        val = ArrayDataset(val.x[512:], val.y[512:], f"{val.source}[val]", val.preprocess)
    else:
        calib_data = calib_data.subset(recal_batches * 64, seed=seed)
    orders = {g.id: g.order for g in problem.groups}
    return AccuracyReward(model, graph, dict(scores), val, calib_data, recal_batches=recal_batches, batch_size=64, orders=orders)


def _to_result(problem: Any, outcome: RLSearchOutcome, method: str, notes: list[str], round_to: int) -> SearchResult:
    widths = {**problem.full, **outcome.plan.keep}
    changes, keep, indices = [], {}, {}
    for g in problem.groups:
        k = widths[g.id]
        keep[g.id] = k
        saved = -float(problem.evaluator.deltas(widths, [(g.id, g.width)])[0]) if k != g.width else 0.0
        changes.append(GroupChange(id=g.id, before=g.width, after=k, saved_ms=saved, importance_kept=g.value_of(k) / max(g.values[-1], 1e-12)))
        if k < g.width:
            indices[g.id] = sorted(int(i) for i in g.order[:k])
    if outcome.fell_back:
        notes.append(f"{outcome.stopped}; the plan is the knapsack's")
    elif outcome.stopped:
        notes.append(outcome.stopped)
    if outcome.precision:
        n8 = sum(p == "int8" for p in outcome.precision.values())
        notes.append(f"precision plan: {n8} of {len(outcome.precision)} quantizable layers in int8 (plan.meta['precision'])")
    outcome.plan.keep, outcome.plan.indices = keep, indices
    outcome.plan.meta.update({
        "method": method if not outcome.fell_back else "knapsack",
        "baseline_ms": outcome.baseline_ms,
        "predicted_ms": outcome.predicted_ms,
        "budget_ms": outcome.budget_ms,
        "latency_source": problem.evaluator.source,
        "round_to": round_to,
        "rl": {"episodes": outcome.episodes_run, "evaluations": outcome.evaluations, "best_reward": outcome.best_reward, "wall_s": outcome.wall_s, "rewards": outcome.rewards},
    })
    total_value = problem.total_value()
    return SearchResult(
        plan=outcome.plan,
        predicted_ms=outcome.predicted_ms,
        baseline_ms=outcome.baseline_ms,
        budget_ms=outcome.budget_ms,
        method=method if not outcome.fell_back else "knapsack",
        source=problem.evaluator.source,
        changes=changes,
        importance_kept=problem.value(widths) / total_value if total_value > 0 else 1.0,
        predictor_calls=problem.evaluator.calls,
        notes=notes,
    )
