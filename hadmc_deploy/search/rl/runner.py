"""Run an RL search for N episodes and return the best plan it found.

The runner owns the things every agent needs and none should repeat: seeding,
the progress bar with the best reward so far, the best-plan bookkeeping, the
fallback to the knapsack result when the episode budget is too small to learn
anything, and stopping cleanly (keeping the best plan) when an update diverges.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hadmc_deploy.errors import UsageError
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.search.rl.ddpg import AgentDivergedError, DDPGAgent, DDPGConfig
from hadmc_deploy.search.rl.env import CompressionEnv, RewardFn
from hadmc_deploy.search.rl.ppo import PPOAgent, PPOConfig
from hadmc_deploy.ui import UI, quiet_ui

AGENTS = ("amc", "ppo")
#: below this many episodes an agent cannot learn anything: AMC needs its warm-up
#: plus at least as many learning episodes; PPO needs a few updates of 4 episodes.
MIN_EPISODES = {"amc": 16, "ppo": 12}


@dataclass
class RLSearchOutcome:
    """The best plan an RL search found, with how it got there."""

    plan: WidthPlan
    precision: dict[str, str]
    predicted_ms: float
    baseline_ms: float
    budget_ms: float
    best_reward: float
    rewards: list[float] = field(default_factory=list)
    episodes_run: int = 0
    evaluations: int = 0
    wall_s: float = 0.0
    stopped: str | None = None
    fell_back: bool = False


#: a callable giving the knapsack's (plan, predicted_ms) for the same budget.
Fallback = Callable[[], tuple[WidthPlan, float]]


def _budget(baseline_ms: float, speedup: float | None, latency_ms: float | None) -> float:
    if (speedup is None) == (latency_ms is None):
        raise UsageError("give exactly one of --speedup and --latency-ms")
    if speedup is not None:
        if not speedup >= 1.0:
            raise UsageError(f"--speedup must be >= 1, got {speedup}")
        return baseline_ms / speedup
    if not latency_ms > 0:  # type: ignore[operator]
        raise UsageError(f"--latency-ms must be positive, got {latency_ms}")
    return float(latency_ms)  # type: ignore[arg-type]


def run_rl_search(
    graph: DependencyGraph,
    scores: dict[str, np.ndarray],
    latency_model: Any,
    reward_fn: RewardFn,
    *,
    agent: str = "amc",
    speedup: float | None = None,
    latency_ms: float | None = None,
    episodes: int = 60,
    seed: int = 0,
    round_to: int = 1,
    floor_ratio: float = 0.1,
    precisions: tuple[str, ...] = (),
    latency_weight: float = 0.0,
    ddpg: DDPGConfig | None = None,
    ppo: PPOConfig | None = None,
    fallback: Fallback | None = None,
    options: dict[str, list[int]] | None = None,
    ui: UI | None = None,
) -> RLSearchOutcome:
    """Train `agent` ("amc": DDPG, pruning only; "ppo": PPO, pruning + precision when `precisions` has two).

    The plan returned is the best-rewarded candidate seen (exploration or the
    final noise-free policy rollout); it always meets the budget by construction.
    """
    ui = ui or quiet_ui()
    if agent not in AGENTS:
        raise UsageError(f"unknown RL search {agent!r}", hint=f"choose one of {', '.join(AGENTS)}")
    if agent == "amc" and len(precisions) > 1:
        raise UsageError("the amc search decides widths only", hint="use --search ppo for joint pruning and precision")
    started = time.perf_counter()
    env = CompressionEnv(graph, scores, latency_model, float("inf"), reward_fn, round_to=round_to, floor_ratio=floor_ratio, precisions=precisions, latency_weight=latency_weight, options=options)
    env.budget_ms = _budget(env.baseline_ms, speedup, latency_ms)
    env.reset()  # raises BudgetError when even the floor plan cannot fit

    if episodes < MIN_EPISODES[agent]:
        return _fall_back(env, agent, episodes, fallback, started, ui)

    ddpg_cfg = ddpg or DDPGConfig(warmup=max(episodes // 3, 1))
    ppo_cfg = ppo or PPOConfig()
    ddpg_agent = DDPGAgent(env.state_dim, ddpg_cfg, seed) if agent == "amc" else None
    ppo_agent = PPOAgent(env.state_dim, len(precisions) if len(precisions) > 1 else 1, ppo_cfg, seed) if agent == "ppo" else None

    best: tuple[float, dict[str, int], dict[str, str]] | None = None
    rewards: list[float] = []
    stopped = None
    with ui.progress(f"{agent} search", episodes) as task:
        for episode in range(episodes):
            state = env.reset()
            states, transitions, extras = [], [], []
            done = False
            reward = 0.0
            while not done:
                t = len(states)
                if ddpg_agent is not None:
                    ratio, q_idx, extra = ddpg_agent.act(state, episode), None, {}
                else:
                    ratio, q_idx, extra = ppo_agent.act(state, env.step_has_precision(t))  # type: ignore[union-attr]
                next_state, reward, done, info = env.step(ratio, q_idx)
                applied = info.keep / env.steps[t][1]
                transitions.append((state, applied, next_state, done))
                states.append(state)
                extras.append(extra)
                state = next_state
            rewards.append(reward)
            if math.isfinite(reward) and (best is None or reward > best[0]):
                best = (reward, *env.candidate())
            try:
                if ddpg_agent is not None:
                    ddpg_agent.observe_episode(transitions, reward, episode)
                else:
                    ppo_agent.observe_episode(states, extras, reward)  # type: ignore[union-attr]
            except AgentDivergedError as exc:
                stopped = f"stopped at episode {episode + 1}/{episodes}: {exc}; keeping the best plan found"
                ui.warn(stopped)
                task.advance()
                break
            task.advance()
            task.update(info=f"best {best[0]:.4f}  last {reward:.4f}" if best else f"last {reward}")
        if stopped is None:  # the learned policy without exploration noise, as AMC exports it
            reward = _greedy_rollout(env, ddpg_agent, ppo_agent)
            rewards.append(reward)
            if math.isfinite(reward) and (best is None or reward > best[0]):
                best = (reward, *env.candidate())

    if best is None:
        ui.warn(f"the {agent} search found no candidate with a finite reward")
        return _fall_back(env, agent, episodes, fallback, started, ui, reason="no finite reward")
    reward, keep, precision = best
    predicted = env.predicted_ms(keep, precision)
    plan = WidthPlan(keep=dict(keep), meta={"search": agent, "reward": reward, "precision": precision, "episodes": len(rewards), "seed": seed})
    return RLSearchOutcome(
        plan=plan,
        precision=precision,
        predicted_ms=predicted,
        baseline_ms=env.baseline_ms,
        budget_ms=env.budget_ms,
        best_reward=reward,
        rewards=rewards,
        episodes_run=len(rewards),
        evaluations=len(env.reward_cache),
        wall_s=time.perf_counter() - started,
        stopped=stopped,
    )


def _greedy_rollout(env: CompressionEnv, ddpg_agent: DDPGAgent | None, ppo_agent: PPOAgent | None) -> float:
    state = env.reset()
    done = False
    reward = 0.0
    t = 0
    while not done:
        if ddpg_agent is not None:
            ratio, q_idx = ddpg_agent.greedy(state), None
        else:
            ratio, q_idx = ppo_agent.greedy(state, env.step_has_precision(t))  # type: ignore[union-attr]
        state, reward, done, _ = env.step(ratio, q_idx)
        t += 1
    return reward


def _fall_back(env: CompressionEnv, agent: str, episodes: int, fallback: Fallback | None, started: float, ui: UI, reason: str | None = None) -> RLSearchOutcome:
    reason = reason or f"{episodes} episodes are too few for the {agent} search to learn anything (it needs at least {MIN_EPISODES[agent]})"
    if fallback is None:
        raise UsageError(reason, hint=f"pass --episodes {MIN_EPISODES[agent]} or more")
    ui.warn(f"{reason}; using the knapsack search's plan instead")
    plan, predicted = fallback()
    plan.meta = {**plan.meta, "search": "knapsack", "requested_search": agent, "fallback_reason": reason}
    return RLSearchOutcome(
        plan=plan,
        precision={},
        predicted_ms=predicted,
        baseline_ms=env.baseline_ms,
        budget_ms=env.budget_ms,
        best_reward=float("nan"),
        wall_s=time.perf_counter() - started,
        stopped=reason,
        fell_back=True,
    )
