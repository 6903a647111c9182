"""PPO in the HAD-MC 2.0 form: a pruning agent and a quantization agent, one centralised critic.

Decentralised actors, centralised critic (as in MAPPO, Yu et al. 2022): the
pruning actor outputs a Gaussian keep ratio, the quantization actor a
categorical precision; both read the step's state and are trained with PPO's
clipped objective on the same advantages, which GAE computes from one critic's
values of the joint reward. With `joint=False` only the pruning actor acts.

Hand-written (about 170 lines) rather than stable-baselines3: SB3 has no
multi-agent PPO with a shared critic, and its episode handling would need a
gymnasium wrapper around an environment that is simpler called directly. The
update math (GAE, the clipped loss) is tested on hand-computed examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hadmc_deploy.search.rl.ddpg import AgentDivergedError


@dataclass(frozen=True)
class PPOConfig:
    hidden: int = 64
    lr: float = 3e-4
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    epochs: int = 4
    episodes_per_update: int = 4
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    init_std: float = 0.25
    low: float = 0.0
    high: float = 1.0


def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over one rollout; returns (advantages, returns).

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - done_t) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
    """
    n = len(rewards)
    adv = np.zeros(n, dtype=np.float64)
    next_value, next_adv = last_value, 0.0
    for t in reversed(range(n)):
        live = 1.0 - float(dones[t])
        delta = rewards[t] + gamma * next_value * live - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[t] = next_adv
        next_value = values[t]
    return adv, adv + np.asarray(values, dtype=np.float64)


def clipped_policy_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's surrogate: -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))."""
    ratio = torch.exp(logp_new - logp_old)
    return -torch.min(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages).mean()


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out))


class PruningActor(nn.Module):
    """Gaussian policy over the keep ratio; the mean is squashed into (0, 1)."""

    def __init__(self, state_dim: int, hidden: int, init_std: float) -> None:
        super().__init__()
        self.mean = _mlp(state_dim, hidden, 1)
        self.log_std = nn.Parameter(torch.tensor([math.log(init_std)]))

    def dist(self, state: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(torch.sigmoid(self.mean(state)).squeeze(-1), self.log_std.exp().expand(state.shape[0]))


class QuantizationActor(nn.Module):
    """Categorical policy over the target's precisions for the layers this step sizes."""

    def __init__(self, state_dim: int, hidden: int, n_precisions: int) -> None:
        super().__init__()
        self.logits = _mlp(state_dim, hidden, n_precisions)

    def dist(self, state: torch.Tensor) -> torch.distributions.Categorical:
        return torch.distributions.Categorical(logits=self.logits(state))


class PPOAgent:
    """Collects `episodes_per_update` episodes, then runs `epochs` PPO epochs over them."""

    def __init__(self, state_dim: int, n_precisions: int, cfg: PPOConfig, seed: int) -> None:
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.prune = PruningActor(state_dim, cfg.hidden, cfg.init_std)
            self.quant = QuantizationActor(state_dim, cfg.hidden, n_precisions) if n_precisions > 1 else None
            self.critic = _mlp(state_dim, cfg.hidden, 1)
        params = list(self.prune.parameters()) + list(self.critic.parameters())
        if self.quant is not None:
            params += list(self.quant.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self._rollout: list[dict] = []

    def act(self, state: np.ndarray, has_precision: bool) -> tuple[float, int | None, dict]:
        """Sample both agents' actions; returns (ratio, precision index, what the update needs)."""
        s = torch.from_numpy(state)[None]
        with torch.no_grad():
            d = self.prune.dist(s)
            raw = float(d.mean.item() + d.stddev.item() * torch.randn(1, generator=self.gen).item())
            logp = float(d.log_prob(torch.tensor([raw])).item())
            q_idx, q_logp = None, 0.0
            if self.quant is not None and has_precision:
                qd = self.quant.dist(s)
                q_idx = int(torch.multinomial(qd.probs, 1, generator=self.gen).item())
                q_logp = float(qd.log_prob(torch.tensor([q_idx])).item())
            value = float(self.critic(s).item())
        ratio = self.cfg.low + (self.cfg.high - self.cfg.low) * min(max(raw, 0.0), 1.0)
        return ratio, q_idx, {"raw": raw, "logp": logp, "q_idx": q_idx, "q_logp": q_logp, "value": value}

    def greedy(self, state: np.ndarray, has_precision: bool) -> tuple[float, int | None]:
        s = torch.from_numpy(state)[None]
        with torch.no_grad():
            mean = float(self.prune.dist(s).mean.item())
            q = int(self.quant.dist(s).probs.argmax().item()) if self.quant is not None and has_precision else None
        return self.cfg.low + (self.cfg.high - self.cfg.low) * min(max(mean, 0.0), 1.0), q

    def observe_episode(self, states: list[np.ndarray], extras: list[dict], reward: float) -> float | None:
        """Store the episode (reward at its last step); update every `episodes_per_update` episodes."""
        rewards = np.zeros(len(states))
        rewards[-1] = reward
        dones = np.zeros(len(states))
        dones[-1] = 1.0
        values = np.array([e["value"] for e in extras])
        adv, ret = gae(rewards, values, dones, 0.0, self.cfg.gamma, self.cfg.lam)
        self._rollout.append({"states": np.stack(states), "extras": extras, "adv": adv, "ret": ret})
        if len(self._rollout) < self.cfg.episodes_per_update:
            return None
        loss = self.update()
        self._rollout = []
        return loss

    def update(self) -> float:
        cfg = self.cfg
        s = torch.from_numpy(np.concatenate([r["states"] for r in self._rollout]))
        extras = [e for r in self._rollout for e in r["extras"]]
        adv = torch.tensor(np.concatenate([r["adv"] for r in self._rollout]), dtype=torch.float32)
        ret = torch.tensor(np.concatenate([r["ret"] for r in self._rollout]), dtype=torch.float32)
        if len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        raw = torch.tensor([e["raw"] for e in extras], dtype=torch.float32)
        logp_old = torch.tensor([e["logp"] for e in extras], dtype=torch.float32)
        q_mask = torch.tensor([e["q_idx"] is not None for e in extras])
        q_idx = torch.tensor([e["q_idx"] or 0 for e in extras])
        q_logp_old = torch.tensor([e["q_logp"] for e in extras], dtype=torch.float32)
        total = 0.0
        for _ in range(cfg.epochs):
            d = self.prune.dist(s)
            loss = clipped_policy_loss(d.log_prob(raw), logp_old, adv, cfg.clip) - cfg.entropy_coef * d.entropy().mean()
            if self.quant is not None and bool(q_mask.any()):
                qd = self.quant.dist(s[q_mask])
                loss = loss + clipped_policy_loss(qd.log_prob(q_idx[q_mask]), q_logp_old[q_mask], adv[q_mask], cfg.clip)
                loss = loss - cfg.entropy_coef * qd.entropy().mean()
            loss = loss + cfg.value_coef * nn.functional.mse_loss(self.critic(s).squeeze(-1), ret)
            if not torch.isfinite(loss):
                raise AgentDivergedError(f"PPO update produced a non-finite loss ({loss.item()})")
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total = loss.item()
        return total
