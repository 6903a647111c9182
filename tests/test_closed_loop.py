"""The closed-loop build on a tiny CNN trained on real digits: the plan is timed against the
original before recovery, a miss corrects the latency model and searches again, the deployed
artifact is chosen by measurement, and the exit code follows the measured budget.

Whether this machine lets pruning pay for so small a model is not asserted (timings move
20-30% here); what is asserted is that every outcome is reported and acted on consistently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import DIGITS_TEST, DIGITS_TRAIN, train_tiny

from hadmc_deploy.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny") / "tiny.pth", epochs=2)


def test_budget_is_judged_on_the_measurement(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    # the analytic model's predictions are deterministic; what the loop measures is not
    rc = main(["build", str(tiny), "--target", "cpu", "--speedup", "1.2", "--no-measure-lut", "--budget-rounds", "2", "--out", str(out),
               "--train", DIGITS_TRAIN, "--eval", DIGITS_TEST, "--epochs", "1", "--batch", "1", "--runs", "5", "--warmup", "2",
               "--lut-minutes", "1", "--round-to", "4"])
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    decision = report["decision"]
    budget = decision["budget"]
    # the exit code follows the measurement
    assert budget["goal_speedup"] == pytest.approx(1.2)
    verdict = decision["verdict"]
    assert rc == verdict["exit_code"]
    p50 = {c["name"]: c["p50_ms"] for c in decision["candidates"]}
    reference = p50["baseline-int8"]
    if rc == 0:  # the deployed variant meets the budget within the measured noise
        assert reference / p50[decision["deploy"]] >= 1.2 * (1 - decision["noise"]) and budget["met"]
    elif rc == 15:  # a variant met it, but the guard excluded it
        assert any(c["excluded"] and reference / c["p50_ms"] >= 1.2 * (1 - decision["noise"]) for c in decision["candidates"])
        assert "deployed" in err
    else:
        assert rc == 14 and "was not met when measured" in err and f"{budget['measured_speedup']:.2f}x" in err
        assert all(reference / c["p50_ms"] < 1.2 * (1 - decision["noise"]) for c in decision["candidates"])
    # every round shows its plan, its prediction and its measurement
    rounds = report["closed_loop"]["rounds"]
    assert rounds and all("measured_speedup" in r or "stopped" in r for r in rounds)
    assert report["closed_loop"]["latency_check"]["checked"]
    # the deployed artifact exists, and is never slower than the original beyond the measured noise
    assert (out / decision["artifact"] / "model.onnx").is_file()
    assert p50[decision["deploy"]] <= p50["baseline-fp32"] * (1 + decision["noise"])
    assert all(not c["excluded"] or c["name"] != decision["deploy"] for c in decision["candidates"])
    # the report leads with the decision
    assert (out / "report.md").read_text().startswith(f"**Deploy: `{decision['deploy']}`**")


def test_a_slower_variant_is_not_deployed(tiny: Path, tmp_path: Path) -> None:
    """No budget, INT8 asked for: whichever of FP32 and INT8 measures faster deploys, and the
    build never exits 0 with a deployed variant slower than the original."""
    out = tmp_path / "q"
    rc = main(["build", str(tiny), "--target", "cpu", "--out", str(out), "--calib", DIGITS_TRAIN, "--eval", DIGITS_TEST,
               "--batch", "1", "--runs", "5", "--warmup", "2", "-q"])
    report = json.loads((out / "report.json").read_text())
    decision = report["decision"]
    p50 = {c["name"]: c["p50_ms"] for c in decision["candidates"]}
    assert rc in (0, 15)
    assert p50[decision["deploy"]] <= min(p50.values()) * (1 + decision["noise"]) + 1e-9
    assert report["deploy"]["speedup_vs_fp32_original"] >= 1 - decision["noise"]
