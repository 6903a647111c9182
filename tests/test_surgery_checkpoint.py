"""Surgery semantics, importance criteria and the safe pruned checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hadmc_deploy.arch import build_arch
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import GraphError, UsageError
from hadmc_deploy.graph.align import uniform_plan_keep
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.importance import CRITERIA, score_groups
from hadmc_deploy.loading import LoadedModel, load_model
from hadmc_deploy.models.demo import DEMO_ARCH, DEMO_INPUT_SHAPE, demo_cnn
from hadmc_deploy.pruned_checkpoint import save_pruned
from hadmc_deploy.surgery import apply
from hadmc_deploy.ui import UI

torch.set_num_threads(1)


def _data(n: int = 64) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64), "random")


def test_surgery_makes_smaller_tensors_and_keeps_original() -> None:
    model = demo_cnn().eval()
    params = sum(p.numel() for p in model.parameters())
    g = trace(model, DEMO_INPUT_SHAPE)
    pruned, plan = apply(model, g, WidthPlan(keep={"layer1.0.conv1": 8}))
    assert sum(p.numel() for p in model.parameters()) == params
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.layer1[0].conv1.weight.shape[0] == 8
    assert pruned.layer1[0].bn1.num_features == 8 and pruned.layer1[0].bn1.running_mean.shape == (8,)
    assert pruned.layer1[0].conv2.in_channels == 8 and pruned.layer1[0].conv2.weight.shape[1] == 8
    assert len(plan.indices["layer1.0.conv1"]) == 8 and plan.keep["layer1.0.conv1"] == 8
    same, _ = apply(model, g, WidthPlan(keep={"layer1.0.conv1": 8}), inplace=True)
    assert same is model and sum(p.numel() for p in model.parameters()) < params


def test_surgery_keeps_highest_scores_and_rejects_bad_plans() -> None:
    model = demo_cnn().eval()
    g = trace(model, DEMO_INPUT_SHAPE)
    scores = {gr.id: np.arange(gr.width, dtype=float) for gr in g.groups}
    _, plan = apply(model, g, WidthPlan(keep={"conv1": 4}), scores=scores)
    assert plan.indices["conv1"] == [28, 29, 30, 31]
    with pytest.raises(GraphError, match="cannot be pruned"):
        apply(model, g, WidthPlan(keep={"fc": 5}))
    with pytest.raises(GraphError, match="does not have"):
        apply(model, g, WidthPlan(keep={"nope": 5}))
    with pytest.raises(GraphError, match="out of range"):
        apply(model, g, WidthPlan(keep={}, indices={"conv1": [0, 99]}))


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_importance_criteria(criterion: str) -> None:
    model = demo_cnn().eval()
    g = trace(model, DEMO_INPUT_SHAPE)
    data = _data() if CRITERIA[criterion][1] else None
    scores = score_groups(model, g, criterion, data, batches=2, batch_size=16)
    for gr in g.groups:
        assert scores[gr.id].shape == (gr.width,)
    assert np.all(scores["layer1.0.conv1"] > 0) and np.isfinite(scores["layer1.0.conv1"]).all()


def test_importance_prefers_what_it_should() -> None:
    model = demo_cnn().eval()
    g = trace(model, DEMO_INPUT_SHAPE)
    with torch.no_grad():
        model.layer1[0].bn1.weight.copy_(torch.linspace(0.1, 2.0, 32))
        model.layer1[0].conv1.weight[5] *= 100
    bn = score_groups(model, g, "bn")["layer1.0.conv1"]
    assert int(np.argmax(bn)) == 31
    l1 = score_groups(model, g, "l1")["layer1.0.conv1"]
    assert int(np.argmax(l1)) == 5
    with pytest.raises(UsageError, match="needs data"):
        score_groups(model, g, "taylor")
    with pytest.raises(UsageError, match="unknown"):
        score_groups(model, g, "entropy")


def test_pruned_checkpoint_round_trip(tmp_path) -> None:  # noqa: ANN001
    model = demo_cnn().eval()
    loaded = LoadedModel(model, "arch", "demo", DEMO_ARCH, {})
    g = trace(model, DEMO_INPUT_SHAPE)
    pruned, plan = apply(model, g, WidthPlan(keep=uniform_plan_keep(g, 0.5, 8)))
    path = save_pruned(tmp_path / "p.pth", pruned, loaded, plan, DEMO_INPUT_SHAPE)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "hadmc-pruned/1" and raw["arch"] == DEMO_ARCH and raw["input_shape"] == [1, 1, 28, 28]
    back = load_model(path)
    assert back.kind == "pruned"
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back.model(x), pruned(x))
    # pruning a pruned model stacks the plans and still round-trips
    g2 = trace(back.model, DEMO_INPUT_SHAPE)
    twice, plan2 = apply(back.model, g2, WidthPlan(keep=uniform_plan_keep(g2, 0.5)))
    path2 = save_pruned(tmp_path / "p2.pth", twice, back, plan2, DEMO_INPUT_SHAPE)
    again = load_model(path2)
    with torch.no_grad():
        assert torch.equal(again.model(x), twice(x))
    assert len(torch.load(path2, weights_only=True)["stages"]) == 2


UNKNOWN_OP_NET = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.cumsum(self.b(torch.relu(self.a(x))), 1)
        return self.fc(torch.relu(self.c(y)).mean((2, 3)))

def net():
    return Net()
"""


def test_loading_a_pruned_checkpoint_does_not_repeat_the_originals_trace_warnings(tmp_path, capsys) -> None:  # noqa: ANN001
    """A build loads its pruned checkpoint in several stages, each tracing the original again: the
    channel graph's warning about the op it does not understand (a cumulative sum over channels)
    printed once per load."""
    (tmp_path / "ps.py").write_text(UNKNOWN_OP_NET)
    arch = f"{tmp_path / 'ps.py'}:net"
    torch.save(build_arch(arch, {}).state_dict(), tmp_path / "ps.pth")
    loaded = load_model(tmp_path / "ps.pth", arch=arch)
    g = trace(loaded.model, DEMO_INPUT_SHAPE, ui=UI(quiet=True))
    assert "cumsum" in capsys.readouterr().err  # the trace the build shows: warned once
    pruned, plan = apply(loaded.model, g, WidthPlan(keep=uniform_plan_keep(g, 0.5)))
    path = save_pruned(tmp_path / "p.pth", pruned, loaded, plan, DEMO_INPUT_SHAPE)
    back = load_model(path)
    assert capsys.readouterr().err == ""
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back.model(x), pruned(x))

