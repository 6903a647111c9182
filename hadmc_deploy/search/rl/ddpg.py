"""DDPG as AMC uses it (He et al., ECCV 2018, and its reference code).

Actor and critic MLPs (300 hidden units), target networks with soft updates,
a replay buffer, warm-up episodes with uniform random actions, then actions
from the actor perturbed by a truncated-normal noise whose width decays each
episode. Every transition of an episode is stored with the episode's final
reward; a moving average of sampled rewards is subtracted as a baseline.

Written by hand (about 150 lines) rather than taken from stable-baselines3:
AMC's episode-level reward, its baseline and its noise schedule do not fit
SB3's step-reward DDPG without wrappers larger than this file, and the update
math here is tested directly (tests/test_rl_agents.py).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from torch import nn


class AgentDivergedError(RuntimeError):
    """An update produced a non-finite loss or weight; the runner stops and keeps the best plan."""


@dataclass(frozen=True)
class DDPGConfig:
    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    buffer_size: int = 2000
    warmup: int = 20
    init_sigma: float = 0.5
    sigma_decay: float = 0.95
    moving_alpha: float = 0.5
    low: float = 0.0
    high: float = 1.0


def truncated_normal(mean: float, sigma: float, low: float, high: float, rng: np.random.Generator) -> float:
    """One sample of N(mean, sigma) truncated to [low, high], by inverting the CDF (exact, no rejection loop)."""
    if sigma <= 0:
        return float(np.clip(mean, low, high))
    dist = NormalDist(mean, sigma)
    lo, hi = dist.cdf(low), dist.cdf(high)
    if hi - lo < 1e-12:  # the mass is all beyond one bound
        return float(low if mean < low else high)
    u = float(rng.uniform(lo, hi))
    u = min(max(u, 1e-12), 1 - 1e-12)
    return float(np.clip(dist.inv_cdf(u), low, high))


def noise_sigma(episode: int, cfg: DDPGConfig) -> float:
    """The exploration width for an episode after warm-up: init * decay ** (episodes since warm-up)."""
    return cfg.init_sigma * cfg.sigma_decay ** max(episode - cfg.warmup, 0)


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * source, parameter by parameter."""
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters(), strict=True):
            t.mul_(1 - tau).add_(s, alpha=tau)


def td_target(reward: torch.Tensor, next_q: torch.Tensor, done: torch.Tensor, discount: float) -> torch.Tensor:
    """r + discount * (1 - done) * Q'(s', mu'(s'))."""
    return reward + discount * (1.0 - done) * next_q


class Actor(nn.Module):
    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """AMC's critic: state and action embedded separately, summed, then two layers."""

    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.fs = nn.Linear(state_dim, hidden)
        self.fa = nn.Linear(1, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.fs(state) + self.fa(action))


class ReplayBuffer:
    """A ring buffer of (s, a, r, s', done); samples with the agent's own generator."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.s = np.zeros((capacity, state_dim), np.float32)
        self.a = np.zeros((capacity, 1), np.float32)
        self.r = np.zeros((capacity, 1), np.float32)
        self.s2 = np.zeros((capacity, state_dim), np.float32)
        self.d = np.zeros((capacity, 1), np.float32)
        self.capacity, self.size, self._next = capacity, 0, 0

    def add(self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool) -> None:
        i = self._next
        self.s[i], self.a[i], self.r[i], self.s2[i], self.d[i] = s, a, r, s2, float(done)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, size=n)
        return tuple(torch.from_numpy(arr[idx]) for arr in (self.s, self.a, self.r, self.s2, self.d))


class DDPGAgent:
    """The `amc` search's agent: one continuous action (keep ratio) per step."""

    def __init__(self, state_dim: int, cfg: DDPGConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.actor = Actor(state_dim, cfg.hidden)
            self.critic = Critic(state_dim, cfg.hidden)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.buffer = ReplayBuffer(cfg.buffer_size, state_dim)
        self.moving_average: float | None = None

    def act(self, state: np.ndarray, episode: int) -> float:
        """Uniform random during warm-up, then actor output + decaying truncated-normal noise."""
        cfg = self.cfg
        if episode < cfg.warmup:
            return float(self.rng.uniform(cfg.low, cfg.high))
        with torch.no_grad():
            mean = float(self.actor(torch.from_numpy(state)[None]).item())
        mean = cfg.low + (cfg.high - cfg.low) * mean
        return truncated_normal(mean, noise_sigma(episode, cfg), cfg.low, cfg.high, self.rng)

    def greedy(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return self.cfg.low + (self.cfg.high - self.cfg.low) * float(self.actor(torch.from_numpy(state)[None]).item())

    def observe_episode(self, transitions: list[tuple[np.ndarray, float, np.ndarray, bool]], reward: float, episode: int) -> float | None:
        """Store the episode (final reward on every step, as AMC does); update once per step after warm-up."""
        span = self.cfg.high - self.cfg.low
        for s, a, s2, done in transitions:
            self.buffer.add(s, (a - self.cfg.low) / span, reward, s2, done)
        if episode < self.cfg.warmup:
            return None
        loss = None
        for _ in transitions:
            loss = self.update()
        return loss

    def update(self) -> float:
        cfg = self.cfg
        n = min(cfg.batch_size, self.buffer.size)
        s, a, r, s2, d = self.buffer.sample(n, self.rng)
        batch_mean = float(r.mean())
        if self.moving_average is None:
            self.moving_average = batch_mean
        else:
            self.moving_average += cfg.moving_alpha * (batch_mean - self.moving_average)
        r = r - self.moving_average
        with torch.no_grad():
            target = td_target(r, self.critic_target(s2, self.actor_target(s2)), d, cfg.discount)
        critic_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(s, self.actor(s)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        total = critic_loss.item() + actor_loss.item()
        if not math.isfinite(total) or not all(torch.isfinite(p).all() for p in self.actor.parameters()):
            raise AgentDivergedError(f"DDPG update produced a non-finite loss ({total})")
        soft_update(self.actor_target, self.actor, cfg.tau)
        soft_update(self.critic_target, self.critic, cfg.tau)
        return total
