"""The RL agents' update math on hand-computed examples, and that each agent actually learns a toy task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_deploy.search.rl.ddpg import (
    DDPGAgent,
    DDPGConfig,
    noise_sigma,
    soft_update,
    td_target,
    truncated_normal,
)
from hadmc_deploy.search.rl.ppo import PPOAgent, PPOConfig, clipped_policy_loss, gae


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: extra threads only fight the other test workers for the 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- PPO --------------------------------------------------------------------------------
def test_gae_matches_hand_computation() -> None:
    # gamma 0.9, lam 0.8; one 3-step episode with the reward at its end.
    # t=2: delta = 1 - 0.7 = 0.3                      A = 0.3
    # t=1: delta = 0.9 * 0.7 - 0.6 = 0.03             A = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0.9 * 0.6 - 0.5 = 0.04             A = 0.04 + 0.72 * 0.246 = 0.21712
    adv, ret = gae(np.array([0.0, 0.0, 1.0]), np.array([0.5, 0.6, 0.7]), np.array([0, 0, 1]), 0.0, 0.9, 0.8)
    np.testing.assert_allclose(adv, [0.21712, 0.246, 0.3], atol=1e-12)
    np.testing.assert_allclose(ret, [0.71712, 0.846, 1.0], atol=1e-12)


def test_gae_does_not_bootstrap_across_episode_ends() -> None:
    # two episodes back to back: [1] then [0, 2]; gamma = lam = 1; the last value (9) is after a done.
    adv, _ = gae(np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.2, 0.4]), np.array([1, 0, 1]), 9.0, 1.0, 1.0)
    np.testing.assert_allclose(adv, [0.5, 1.8, 1.6], atol=1e-12)


def test_ppo_clipped_loss_matches_hand_computation_and_gradients() -> None:
    # ratios 1.6, 0.6, 1.1 with advantages 1, -2, 3 and eps 0.2:
    # min(1.6, 1.2) = 1.2; min(-1.2, -1.6) = -1.6; min(3.3, 3.3) = 3.3 -> loss = -(2.9 / 3)
    logp_old = torch.log(torch.tensor([0.5, 0.5, 0.5]))
    logp_new = torch.log(torch.tensor([0.8, 0.3, 0.55])).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 3.0])
    loss = clipped_policy_loss(logp_new, logp_old, adv, 0.2)
    assert loss.item() == pytest.approx(-2.9 / 3, abs=1e-6)
    loss.backward()
    # clipped samples carry no gradient; the unclipped one: d/dlogp = -ratio * A / n
    np.testing.assert_allclose(logp_new.grad.numpy(), [0.0, 0.0, -1.1 * 3 / 3], atol=1e-6)


def test_ppo_agents_learn_the_rewarded_ratio_and_precision() -> None:
    # a one-step toy: reward peaks at ratio 0.75 and gives a bonus for precision index 1.
    agent = PPOAgent(state_dim=3, n_precisions=2, cfg=PPOConfig(lr=1e-2, episodes_per_update=8, epochs=4, entropy_coef=0.0), seed=0)
    state = np.array([0.2, 0.5, 0.9], dtype=np.float32)
    start = agent.greedy(state, True)[0]
    for _ in range(10 * 8):
        ratio, q, extra = agent.act(state, True)
        agent.observe_episode([state], [extra], reward=-((ratio - 0.75) ** 2) + (0.1 if q == 1 else 0.0))
    end, q = agent.greedy(state, True)
    assert abs(end - 0.75) < 0.08 < abs(start - 0.75), (start, end)
    assert q == 1
    with torch.no_grad():
        assert agent.quant.dist(torch.from_numpy(state)[None]).probs[0, 1] > 0.9


# -- DDPG -------------------------------------------------------------------------------
def test_td_target_bootstraps_only_when_not_done() -> None:
    out = td_target(torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0]), torch.tensor([0.0, 1.0]), 0.9)
    np.testing.assert_allclose(out.numpy(), [10.0, 2.0])


def test_soft_update_is_polyak_averaging() -> None:
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    for p in target.parameters():
        nn.init.zeros_(p)
    for p in source.parameters():
        nn.init.ones_(p)
    soft_update(target, source, 0.1)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())
    soft_update(target, source, 0.1)
    assert all(torch.allclose(p, torch.full_like(p, 0.19)) for p in target.parameters())


@pytest.mark.parametrize(("mean", "sigma"), [(0.5, 0.3), (1.4, 0.5), (0.1, 0.05), (0.9, 2.0)])
def test_truncated_normal_stays_in_bounds(mean: float, sigma: float) -> None:
    rng = np.random.default_rng(0)
    samples = np.array([truncated_normal(mean, sigma, 0.2, 1.0, rng) for _ in range(2000)])
    assert samples.min() >= 0.2 and samples.max() <= 1.0
    assert len(np.unique(samples)) > 1000  # a real distribution, not a clamp onto a bound


def test_truncated_normal_with_no_mass_inside_returns_the_nearest_bound() -> None:
    # 10 sigma outside: the CDF cannot resolve the interval; the nearest bound is the limit of the distribution.
    rng = np.random.default_rng(0)
    assert truncated_normal(-0.3, 0.05, 0.2, 1.0, rng) == 0.2
    assert truncated_normal(1.8, 0.05, 0.2, 1.0, rng) == 1.0


def test_truncated_normal_matches_the_untruncated_mean_when_far_from_bounds() -> None:
    rng = np.random.default_rng(1)
    samples = np.array([truncated_normal(0.5, 0.05, 0.0, 1.0, rng) for _ in range(4000)])
    assert samples.mean() == pytest.approx(0.5, abs=0.005)
    assert samples.std() == pytest.approx(0.05, rel=0.1)


def test_noise_is_constant_during_warmup_then_decays_geometrically() -> None:
    cfg = DDPGConfig(warmup=10, init_sigma=0.5, sigma_decay=0.9)
    assert noise_sigma(0, cfg) == noise_sigma(10, cfg) == 0.5
    assert noise_sigma(12, cfg) == pytest.approx(0.5 * 0.81)
    sigmas = [noise_sigma(e, cfg) for e in range(10, 60)]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    rng = np.random.default_rng(2)
    early = np.std([truncated_normal(0.5, noise_sigma(11, cfg), 0, 1, rng) for _ in range(1000)])
    late = np.std([truncated_normal(0.5, noise_sigma(50, cfg), 0, 1, rng) for _ in range(1000)])
    assert late < early / 5


def test_ddpg_actor_moves_towards_the_rewarded_ratio() -> None:
    # a bandit with the reward peaked at 0.3, seen as 8-step episodes (8 critic updates per episode, as AMC does per layer).
    cfg = DDPGConfig(hidden=32, warmup=15, lr_actor=1e-3, lr_critic=1e-2, batch_size=32, init_sigma=0.3)
    agent = DDPGAgent(state_dim=3, cfg=cfg, seed=0)
    state = np.array([0.1, 0.4, 0.8], dtype=np.float32)
    end_state = np.zeros(3, dtype=np.float32)
    start = agent.greedy(state)
    for episode in range(60):
        ratio = agent.act(state, episode)
        agent.observe_episode([(state, ratio, end_state, True)] * 8, -4 * (ratio - 0.3) ** 2, episode)
    assert abs(agent.greedy(state) - 0.3) < 0.06 < abs(start - 0.3)


def test_ddpg_update_with_nan_reward_raises_diverged() -> None:
    from hadmc_deploy.search.rl.ddpg import AgentDivergedError

    agent = DDPGAgent(state_dim=2, cfg=DDPGConfig(hidden=8, warmup=0, batch_size=4), seed=0)
    s = np.zeros(2, dtype=np.float32)
    with pytest.raises(AgentDivergedError):
        agent.observe_episode([(s, 0.5, s, True)], math.nan, episode=1)
