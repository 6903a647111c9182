"""Without labelled --eval data the INT8 graph is held to the same 1 point as with it, vouched for
by held-out calibration images (calibration/guard.py): a real build of a trained digits CNN whose
calibration set leaves too few held-out images to vouch keeps INT8 from deploying (exit 15, the
FP32 original deployed, the way out named); with enough held-out images the same INT8 deploys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import DIGITS_TRAIN, TINY_ARCH, train_tiny

from hadmc_deploy.build.sample_budget import MIN_CHECK_SAMPLES, MIN_INT8_GUARD_SAMPLES
from hadmc_deploy.build.stages.decide import INT8_DISAGREES
from hadmc_deploy.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("int8guard") / "tiny.pth", epochs=3)


def _build(tiny: Path, out: Path, calib_samples: int) -> tuple[int, dict]:
    rc = main(["build", str(tiny), "--arch", TINY_ARCH, "--target", "cpu", "--precision", "int8", "--calib", DIGITS_TRAIN,
               "--calib-samples", str(calib_samples), "--no-measure-lut", "--batch", "1", "--runs", "3", "--warmup", "1", "-q", "--out", str(out)])
    return rc, json.loads((out / "report.json").read_text())


def test_too_few_held_out_images_keep_int8_from_deploying(tiny: Path, tmp_path: Path) -> None:
    """digits' 1,437 training images, 1,200 of them for the ranges: 237 held out cannot vouch for
    a 1-point loss even when INT8 agrees on every one of them."""
    rc, report = _build(tiny, tmp_path / "few", 1200)
    base = report["quantization"]["baseline"]
    assert base["check"]["samples"] < MIN_CHECK_SAMPLES and not base["deployable"]
    assert "even if all agree" in base["reason"] and len(base["guard"]["steps"]) == 1  # no repair tried: none could help
    assert rc == 15 and report["decision"]["deploy"] == "baseline-fp32"
    excluded = {c["name"]: c["excluded"] for c in report["decision"]["candidates"]}
    assert excluded["baseline-int8"].startswith(INT8_DISAGREES)
    hint = report["decision"]["verdict"]["hint"]
    assert "--eval" in hint and "--calib-samples" in hint and str(MIN_INT8_GUARD_SAMPLES) in hint
    assert "baseline INT8 guard" in (tmp_path / "few" / "report.md").read_text()


def test_enough_held_out_images_vouch_for_the_same_int8(tiny: Path, tmp_path: Path) -> None:
    rc, report = _build(tiny, tmp_path / "enough", 256)
    base = report["quantization"]["baseline"]
    assert base["check"]["samples"] >= MIN_INT8_GUARD_SAMPLES and base["deployable"]
    assert base["check"]["loss_bound"] <= 0.01 and "expected top-1 loss" in base["reason"]
    excluded = {c["name"]: c["excluded"] for c in report["decision"]["candidates"]}
    assert rc == 0 and excluded["baseline-int8"] == ""  # it may deploy (whether it does is the timing's call)
    _mixed_graphs_checked_only_where_they_could_deploy(report)


def _mixed_graphs_checked_only_where_they_could_deploy(report: dict) -> None:
    """Every mixed graph's check against FP32 was left to the decide stage; it ran for a mixed graph
    that deployed or was the fastest allowed, and the deployed variant is never an unchecked one."""
    quant, decision = report["quantization"], report["decision"]
    pending = {f"{m}-mixed" for m in ("baseline", "pruned") if ((quant.get(m) or {}).get("mixed") or {}).get("check_pending")}
    assert all(quant[m]["mixed"]["check"] is None for m in ("baseline", "pruned") if (quant.get(m) or {}).get("mixed"))
    checks = decision.get("mixed_checks") or {}
    assert set(checks) == pending
    allowed = [c for c in decision["candidates"] if not c["excluded"]]
    fastest = min(allowed, key=lambda c: c["p50_ms"])["name"]
    for name in {decision["deploy"], fastest} & pending:
        assert isinstance(checks[name], dict) and checks[name]["samples"] >= MIN_INT8_GUARD_SAMPLES
    assert not (decision["deploy"] in pending and not checks[decision["deploy"]]["passed"])
    for c in decision["candidates"]:
        assert ("unchecked" in c) == (c["name"] in pending and not isinstance(checks[c["name"]], dict) and not c["excluded"])
