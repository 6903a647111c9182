"""report.json's schema on a real (unpruned, FP32) build of a random-init tiny CNN, the Markdown
rendered from it, and a schema violation being caught."""

from __future__ import annotations

import copy
import json

import pytest
from pipeline_models import DIGITS_TEST, TINY_ARCH

from hadmc_deploy.build.side_by_side import ROUND_STATS, ROUNDS
from hadmc_deploy.cli import main
from hadmc_deploy.report import REQUIRED, SCHEMA, SCHEMA_VERSION, validate_report
from hadmc_deploy.report_md import render_markdown


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("schema") / "b"
    argv = ["build", "--arch", TINY_ARCH, "--input-shape", "1,1,16,16", "--target", "cpu", "--precision", "fp32", "--no-measure-lut", "--eval", DIGITS_TEST,
            "--batch", "1", "--runs", "3", "--warmup", "1", "--out", str(out), "-q"]
    assert main(argv) == 0
    return json.loads((out / "report.json").read_text())


def test_report_conforms_to_schema(report: dict) -> None:
    assert validate_report(report) == []
    assert report["schema"] == SCHEMA and report["schema_version"] == SCHEMA_VERSION and report["complete"]
    assert set(REQUIRED) <= set(report)
    (row,) = report["variants"]
    assert row["name"] == "baseline-fp32" and row["backend"] == "onnxruntime"
    # at the primary batch the decision's side-by-side rounds (8 runs each at least), not --runs 3
    assert row["latency"]["1"]["p50_ms"] == report["decision"]["candidates"][0]["p50_ms"] > 0
    assert row["latency"]["1"]["timed"] in {ROUND_STATS.format(rounds=n) for n in (ROUNDS, 2 * ROUNDS)} and row["latency"]["1"]["runs"] >= 8 * ROUNDS
    assert row["predicted"]["1"]["source"] == report["latency_model"]["source"] == "analytic"
    assert report["deploy"]["variant"] == "baseline-fp32" and report["deploy"]["artifact"].endswith("deploy")
    assert [s["name"] for s in report["stages"]][-1] == "report"
    statuses = {s["name"]: s["status"] for s in report["stages"]}
    assert statuses["search"] == "skipped" and statuses["calibrate"] == "skipped" and statuses["export"] == "done"


def test_markdown_renders_every_variant(report: dict) -> None:
    md = render_markdown(report)
    assert "| baseline-fp32 |" in md and "analytic" in md and "## Stages" in md
    assert md.splitlines()[0].startswith("**Deploy: `baseline-fp32`**")  # the report leads with the decision


def test_schema_violations_are_reported(report: dict) -> None:
    broken = copy.deepcopy(report)
    del broken["variants"][0]["latency"]
    broken["accuracy"] = []
    problems = validate_report(broken)
    assert any("lacks 'latency'" in p for p in problems) and any("'accuracy'" in p for p in problems)
