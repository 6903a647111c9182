"""Reinforcement-learning policy search: AMC's DDPG (`amc`) and HAD-MC 2.0's multi-agent PPO (`ppo`).

Both decide, group by group, how many channels to keep (and, for `ppo` with two
precisions, INT8 or float per quantizable layer) under a latency budget that the
environment guarantees by construction; the reward is the candidate's accuracy
after BN recalibration. See `env.py`, `ddpg.py`, `ppo.py`, `runner.py`.
"""

from hadmc_deploy.search.rl.api import RL_METHODS, rl_search
from hadmc_deploy.search.rl.env import CompressionEnv
from hadmc_deploy.search.rl.reward import AccuracyReward, ImportanceProxyReward
from hadmc_deploy.search.rl.runner import AGENTS, MIN_EPISODES, RLSearchOutcome, run_rl_search

__all__ = [
    "AGENTS",
    "MIN_EPISODES",
    "RL_METHODS",
    "AccuracyReward",
    "CompressionEnv",
    "ImportanceProxyReward",
    "RLSearchOutcome",
    "rl_search",
    "run_rl_search",
]
