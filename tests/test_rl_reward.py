"""The RL reward on a real (tiny) network: surgery + BN recalibration + accuracy, and simulated INT8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.importance import score_groups
from hadmc_deploy.latency import AnalyticLatencyModel
from hadmc_deploy.models.resnet import cifar_resnet
from hadmc_deploy.recover import recalibrate_bn
from hadmc_deploy.search.rl import rl_search
from hadmc_deploy.search.rl.reward import AccuracyReward, simulate_int8
from hadmc_deploy.targets import get_target
from hadmc_deploy.train import evaluate_accuracy


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = cifar_resnet(depth=8, num_classes=4, in_channels=1, width=8).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 1, 12, 12)).astype(np.float32)
    recalibrate_bn(model, ArrayDataset(x, np.zeros(96, np.int64), "synthetic"), batches=2, batch_size=48)
    with torch.no_grad():  # labels the model itself gives, so the unpruned accuracy is high and pruning can lose it
        y = model(torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)
    data = ArrayDataset(x, y, "synthetic")
    graph = trace(model, (32, 1, 12, 12))  # batch 32: latency is compute, not per-kernel overhead
    return model, graph, score_groups(model, graph, "l1"), data


def test_full_plan_scores_the_unpruned_model_after_bn_recalibration(tiny) -> None:
    model, graph, scores, data = tiny
    reward = AccuracyReward(model, graph, scores, data, data, recal_batches=2, batch_size=48)
    full = {g.id: g.width for g in graph.prunable_groups}
    value = reward(full, {})
    assert value == pytest.approx(1.0) and reward.evaluations == 1  # same recalibration as the fixture: same model
    narrow = reward({g.id: max(1, g.width // 4) for g in graph.prunable_groups}, {})
    assert narrow < value  # cutting 3/4 of every layer costs accuracy on the model's own labels
    assert evaluate_accuracy(model, data) == pytest.approx(100.0)  # the original model was not changed


def test_simulated_int8_perturbs_outputs_slightly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        simulate_int8(model, ["0", "3"], x)
        out = model(x)
    err = (out - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()
    assert len(torch.unique(model[0].weight[0])) <= 255  # weights on an int8 grid


def test_rl_search_on_a_real_graph_meets_the_budget(tiny) -> None:
    model, graph, scores, data = tiny
    latency = AnalyticLatencyModel(get_target("cpu"))
    result = rl_search(graph, scores, latency, method="ppo", speedup=1.3, round_to=1, model=model, val_data=data, val_samples=48,
                       recal_batches=1, episodes=12, seed=0, precisions=("fp32", "int8"))
    assert result.method == "ppo" and result.predicted_ms <= result.budget_ms * (1 + 1e-9)
    assert set(result.plan.meta["precision"]) <= {name for name, _ in model.named_modules()}
    assert 0.0 <= result.plan.meta["rl"]["best_reward"] <= 1.0
