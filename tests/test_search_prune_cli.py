"""`hadmc-deploy prune --speedup`: search on the traced graph, surgery, recovery, ORT measurement."""

from __future__ import annotations

import json

import pytest
import torch

from hadmc_deploy.cli import main
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.importance import score_groups
from hadmc_deploy.latency import load_latency_model
from hadmc_deploy.loading import load_model
from hadmc_deploy.models.resnet import cifar_resnet
from hadmc_deploy.search import search
from hadmc_deploy.surgery import apply
from hadmc_deploy.targets import get_target

ARCH = "hadmc_deploy.models.resnet:cifar_resnet"
KWARGS = {"depth": 8, "num_classes": 10, "in_channels": 1, "width": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["knapsack", "greedy", "uniform"])
def test_search_on_a_traced_resnet_gives_a_plan_surgery_applies(method: str) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(**KWARGS).eval()
    graph = trace(model, (1, 1, 8, 8))
    scores = score_groups(model, graph, "l1")
    latency = load_latency_model(get_target("cpu"))  # analytic: no table measured in tests
    result = search(graph, scores, latency, method=method, speedup=1.08, round_to=4)
    assert result.predicted_ms <= result.budget_ms * (1 + 1e-9)
    assert result.source == "analytic"
    pruned, plan = apply(model, graph, result.plan, scores=scores)
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # the prediction the search reports is the predictor's for the pruned model's own graph
    pruned_graph = trace(pruned, (1, 1, 8, 8))
    assert latency.predict(pruned_graph.layer_specs()).total_ms == pytest.approx(result.predicted_ms, rel=1e-6)


def test_prune_cli_speedup_end_to_end(tmp_path, capsys) -> None:
    from hadmc_deploy.data import load_data
    from hadmc_deploy.train import train_classifier

    torch.manual_seed(0)
    model = train_classifier(cifar_resnet(**KWARGS), load_data("builtin:digits:train"), epochs=4, lr=0.1, batch_size=64)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"arch": ARCH, "arch_kwargs": KWARGS, "state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "tiny_pruned.pth"
    # --precision fp32: prune prices plans at the build's precision (INT8 by default on cpu); this
    # tiny model's FP32 budget is the one this test was written for
    common = [str(ckpt), "--arch", ARCH, "--arch-kwargs", json.dumps(KWARGS), "--input-shape", "1,1,8,8", "--target", "cpu", "--round-to", "4",
              "--precision", "fp32", "--no-measure-lut", "--timing-rounds", "1", "-q"]
    code = main(["prune", *common, "--speedup", "1.08", "--train", "builtin:digits:train", "--eval", "builtin:digits:test", "--epochs", "1", "-o", str(out), "--json"])
    captured = capsys.readouterr()
    # the exit code follows the measurement on this shared machine: 0 when the plan measured within
    # the budget, else 14 with the measured miss named (the checkpoint and summary are written either way)
    assert code in (0, 14), captured.err
    if code == 14:
        assert "was not met when measured" in captured.err.strip().splitlines()[-1]
    # stdout carries the summary on success and the error on exit 14: summary.json has it both times
    result = json.loads((tmp_path / "tiny_pruned-prune" / "summary.json").read_text())
    if code == 0:
        assert json.loads(captured.out)["params"] == result["params"]
    assert result["predicted"]["source"] == "analytic" and any("analytic" in n for n in result["notes"])
    # when the closed loop measured a miss and re-planned (a correction, or its best measured plan
    # kept), the budget is judged on the measurement, and the first round's analytic prediction is
    # no longer the criterion
    replanned = bool(result["search"].get("forced_plan") or result["search"].get("correction"))
    if not replanned:
        assert result["predicted"]["speedup"] >= 1.08 - 1e-9
    assert result["measured"]["original_ms"] > 0 and result["measured"]["pruned_ms"] > 0
    assert result["params"]["pruned"] < result["params"]["original"]
    assert result["macs"]["pruned"] < result["macs"]["original"]
    acc = result["accuracy"]
    assert acc["original"] > 85
    assert acc["after_recovery"] >= acc["after_bn_recalibration"] >= 0
    # the analytic plan is fixed, and one epoch recovers it above 80%; a re-planned one prunes as
    # far as the measurement on this machine asked (a fresh-clone CI run re-planned to a plan that
    # one epoch brought back to 74%), so there recovery is held to well above chance (10 classes)
    assert acc["after_recovery"] > (50 if replanned else 80)
    assert result["recovery"]["mode"] == "distillation"
    md = (tmp_path / "tiny_pruned-prune" / "summary.md").read_text()
    assert "measured latency, onnxruntime, fp32, batch 1" in md and "after recovery" in md
    assert (result["measured"]["precision"], result["measured"]["batch"]) == ("fp32", 1)  # as the search priced it
    # the pruned checkpoint loads without --arch and matches the reported params
    loaded = load_model(str(out), None, {})
    assert sum(p.numel() for p in loaded.model.parameters()) == result["params"]["pruned"]
    # an unreachable budget: one line, BudgetError's exit code, the best reachable speedup named
    code = main(["prune", *common, "--speedup", "40", "-o", str(tmp_path / "never.pth")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 14 and last.startswith("hadmc-deploy prune: error:") and "best reachable speedup" in last
    assert not (tmp_path / "never.pth").exists()
