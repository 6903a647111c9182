"""The RL environment's guarantees (budget by construction, alignment) and the runner's behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rl_models import StaircaseLatencyTestDouble, chain_graph, random_scores

from hadmc_deploy.errors import BudgetError, GraphError, UsageError
from hadmc_deploy.search import search
from hadmc_deploy.search.rl import CompressionEnv, ImportanceProxyReward, rl_search, run_rl_search
from hadmc_deploy.search.rl.ddpg import DDPGConfig
from hadmc_deploy.ui import UI

FAST_DDPG = DDPGConfig(hidden=32, warmup=8, batch_size=16)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env(widths=(16, 32, 32, 64), speedup=2.0, precisions=(), round_to=8, bumps=True, granularity=1):
    graph = chain_graph(widths, granularity=granularity)
    scores = random_scores(graph)
    env = CompressionEnv(graph, scores, StaircaseLatencyTestDouble(bumps=bumps), math.inf, ImportanceProxyReward(scores), round_to=round_to, precisions=precisions)
    env.budget_ms = env.baseline_ms / speedup
    return env


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.sampled_from([8, 16, 24, 32, 48, 64]), min_size=2, max_size=6),
    speedup=st.floats(1.05, 4.0),
    round_to=st.sampled_from([1, 4, 8]),
    joint=st.booleans(),
    actions=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 1)), min_size=6, max_size=6),
)
def test_random_actions_always_meet_the_budget(widths, speedup, round_to, joint, actions) -> None:
    """Property: whatever the agent asks, the finished plan is predicted within the budget (or reset refuses)."""
    try:
        env = _env(tuple(widths), speedup, ("fp32", "int8") if joint else (), round_to)
    except GraphError:  # nothing to decide: every group is already at its only aligned width
        assert max(widths) <= max(round_to, 8)
        return
    try:
        env.reset()
    except BudgetError:
        assert env.floor_ms > env.budget_ms
        return
    done = False
    t = 0
    while not done:
        ratio, q = actions[t % len(actions)]
        _, _, done, info = env.step(ratio, q)
        assert info.keep <= max(info.wanted_keep, env.steps[t][2])
        group_width = env.steps[t][1]
        assert info.keep == group_width or info.keep % round_to == 0
        t += 1
    assert env.episode_predicted_ms() <= env.budget_ms * (1 + 1e-9)
    keep, precision = env.candidate()
    assert env.predicted_ms(keep, precision) == pytest.approx(env.episode_predicted_ms())


def test_an_unreachable_budget_is_refused_with_the_best_speedup() -> None:
    env = _env(speedup=50.0)
    with pytest.raises(BudgetError, match="best reachable speedup"):
        env.reset()


def test_the_latency_model_sees_each_chosen_precision() -> None:
    env = _env(precisions=("fp32", "int8"), speedup=1.5)
    env.reset()
    while True:
        _, _, done, info = env.step(1.0, 1)
        if done:
            break
    keep, precision = env.candidate()
    assert set(precision.values()) == {"int8"} and "fc" in precision
    assert env.predicted_ms(keep, precision) < env.predicted_ms(keep, {name: "fp32" for name in precision})


def test_state_is_finite_and_fixed_size() -> None:
    env = _env(precisions=("fp32", "int8"))
    state = env.reset()
    rng = np.random.default_rng(0)
    for _ in range(env.n_steps):
        assert state.shape == (env.state_dim,) and np.isfinite(state).all()
        state, _, _, _ = env.step(float(rng.uniform()), int(rng.integers(2)))


# -- runner -------------------------------------------------------------------------------
def _run(agent="amc", seed=0, episodes=20, reward=None, precisions=(), **kw):
    graph = chain_graph()
    scores = random_scores(graph)
    reward = reward or ImportanceProxyReward(scores)
    return run_rl_search(graph, scores, StaircaseLatencyTestDouble(bumps=True), reward, agent=agent, speedup=2.0, episodes=episodes, seed=seed, round_to=8, precisions=precisions, ddpg=FAST_DDPG, **kw)


@pytest.mark.parametrize(("agent", "precisions"), [("amc", ()), ("ppo", ("fp32", "int8"))])
def test_runs_are_seeded_and_deterministic(agent, precisions) -> None:
    a, b, c = _run(agent, 0, precisions=precisions), _run(agent, 0, precisions=precisions), _run(agent, 1, precisions=precisions)
    assert a.rewards == b.rewards and a.plan.keep == b.plan.keep and a.precision == b.precision
    assert a.rewards != c.rewards
    assert a.predicted_ms <= a.budget_ms * (1 + 1e-9)
    assert a.best_reward == max(a.rewards)


def test_nan_in_an_update_stops_and_keeps_the_best_plan(capsys) -> None:
    graph = chain_graph()
    scores = random_scores(graph)
    proxy = ImportanceProxyReward(scores)
    calls = []

    def reward(keep, precision):
        calls.append(1)
        return proxy(keep, precision) if len(calls) <= 12 else math.nan

    for agent in ("amc", "ppo"):
        calls.clear()
        out = run_rl_search(graph, scores, StaircaseLatencyTestDouble(), reward, agent=agent, speedup=2.0, episodes=40, round_to=8, ddpg=FAST_DDPG, ui=UI())
        assert out.stopped and "non-finite" in out.stopped
        assert out.episodes_run < 40
        assert math.isfinite(out.best_reward) and out.best_reward == max(r for r in out.rewards if math.isfinite(r))
        assert out.predicted_ms <= out.budget_ms * (1 + 1e-9)
    assert "keeping the best plan found" in capsys.readouterr().err


def test_too_few_episodes_fall_back_to_the_knapsack(capsys) -> None:
    graph = chain_graph()
    scores = random_scores(graph)
    latency = StaircaseLatencyTestDouble()
    result = rl_search(graph, scores, latency, method="ppo", speedup=2.0, round_to=8, episodes=3, reward=ImportanceProxyReward(scores), ui=UI())
    knap = search(graph, scores, latency, method="knapsack", speedup=2.0, round_to=8)
    assert result.method == "knapsack" and result.plan.keep == knap.plan.keep
    assert "too few" in capsys.readouterr().err
    with pytest.raises(UsageError, match="too few"):
        _run("amc", episodes=3)


def test_rl_search_returns_a_search_result_within_budget() -> None:
    graph = chain_graph()
    scores = random_scores(graph)
    latency = StaircaseLatencyTestDouble(bumps=True)
    result = rl_search(graph, scores, latency, method="amc", speedup=2.0, round_to=8, episodes=20, reward=ImportanceProxyReward(scores), ddpg=FAST_DDPG)
    assert result.method == "amc" and result.predicted_ms <= result.budget_ms * (1 + 1e-9)
    assert {c.id for c in result.changes} == set(result.plan.keep)
    for gid, k in result.plan.keep.items():
        assert k % 8 == 0 or k == graph.group(gid).width
        if k < graph.group(gid).width:
            assert len(result.plan.indices[gid]) == k
    assert result.plan.meta["rl"]["episodes"] == 21  # 20 explored + the noise-free policy


def test_rl_search_without_data_says_what_to_pass() -> None:
    graph = chain_graph()
    with pytest.raises(UsageError, match="--eval"):
        rl_search(graph, random_scores(graph), StaircaseLatencyTestDouble(), method="amc", speedup=2.0, round_to=8)
