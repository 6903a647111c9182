"""The whole build on a tiny CNN trained on real digits: every stage runs, the report has every
variant, a failure in a middle stage resumes there, a second run hits the cache, the accuracy
guard fails the build, and --target t4 without TensorRT stops cleanly at the portable artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import DIGITS_TEST, DIGITS_TRAIN, train_tiny

from hadmc_deploy.cli import main
from hadmc_deploy.report import validate_report

BASE = ["--no-measure-lut", "--train", DIGITS_TRAIN, "--eval", DIGITS_TEST, "--epochs", "1", "--batch", "1", "2", "--runs", "3", "--warmup", "1", "--round-to", "4", "-q"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny") / "tiny.pth", epochs=2)


def statuses(out: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((out / "report.json").read_text())["stages"]}


def test_failure_resume_then_cache_hit(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"
    import hadmc_deploy.build.stages.calibrate as collect  # the stage's own reference to load_or_collect

    real = collect.load_or_collect

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("simulated crash in calibration")

    monkeypatch.setattr(collect, "load_or_collect", broken)
    assert main(["build", str(tiny), "--target", "cpu", "--ratio", "0.3", "--out", str(out), "--allow-accuracy-drop", *BASE]) == 70
    first = statuses(out)
    assert first["calibrate"] == "failed" and first["export"] == "done" and first["evaluate"] == "not run"
    assert not json.loads((out / "report.json").read_text())["complete"]

    monkeypatch.setattr(collect, "load_or_collect", real)
    assert main(["build", "--resume", str(out), "-q"]) == 0
    second = statuses(out)
    for stage in ("load", "trace", "latency model", "search", "surgery", "recover", "export"):
        assert second[stage] == "cached", (stage, second[stage])
    for stage in ("calibrate", "quantize", "backend build", "evaluate", "decide", "report"):
        assert second[stage] == "done", (stage, second[stage])

    report = json.loads((out / "report.json").read_text())
    assert validate_report(report) == []
    names = [v["name"] for v in report["variants"]]
    # a "-mixed" variant follows a model's INT8 one where some layers were measured slower in INT8
    assert [n for n in names if not n.endswith("-mixed")] == ["baseline-fp32", "baseline-int8", "pruned-fp32", "pruned-int8"]
    assert {n for n in names if n.endswith("-mixed")} <= {"baseline-mixed", "pruned-mixed"}
    by = {v["name"]: v for v in report["variants"]}
    for v in report["variants"]:
        assert v["accuracy"] is not None and v["accuracy"] > 50  # ten classes: chance is 10%
    for name, row in by.items():  # calibrated INT8 (and mixed) stays close to its float model
        model = name.split("-")[0]
        assert row["accuracy"] >= by[f"{model}-fp32"]["accuracy"] - 5.0, name
        assert set(v["latency"]) == {"1", "2"} and v["latency"]["1"]["p50_ms"] > 0
        assert (out / v["artifact"] / "model.onnx").is_file()
    pruned = next(v for v in report["variants"] if v["name"] == "pruned-fp32")
    assert pruned["params"] < report["model"]["params"]
    assert report["recovery"]["mode"] == "distillation"
    assert report["accuracy"]["change_points"]["pruning"] is not None
    for f in ("report.md", "plan.json", "pruned.pth", "recovered.pth", "model.onnx", "scales.json", "calibration.cache", "plots/widths.png", "plots/pareto.png"):
        assert (out / f).is_file(), f

    assert main(["build", str(tiny), "--target", "cpu", "--ratio", "0.3", "--out", str(out), "--allow-accuracy-drop", *BASE]) == 0
    third = statuses(out)
    assert all(s in ("cached", "skipped") for name, s in third.items() if name != "report"), third


def test_accuracy_guard(tiny: Path, tmp_path: Path) -> None:
    """A 45% cut with one recovery step loses accuracy on real data: --max-accuracy-drop 0 fails the build
    (the original deploys instead), and --allow-accuracy-drop accepts the loss."""
    out = tmp_path / "g"
    args = ["build", str(tiny), "--target", "cpu", "--precision", "fp32", "--ratio", "0.45", "--epochs", "0.02", "--max-accuracy-drop", "0", "--out", str(out)]
    i = BASE.index("--epochs")
    rest = BASE[:i] + BASE[i + 2 :]
    assert main([*args, *rest]) == 15
    report = json.loads((out / "report.json").read_text())
    guard = report["accuracy"]["guard"]
    assert guard["exceeded"] and guard["drop"] > 0
    assert report["accuracy"]["change_points"]["pruning"] is not None
    assert report["deploy"]["variant"] == "baseline-fp32"  # never hand back something worse than the original
    verdict = report["decision"]["verdict"]
    assert verdict["exit_code"] == 15 and "pruned-" in verdict["why"] and "loses" in verdict["why"]
    assert main([*args, *rest, "--allow-accuracy-drop"]) == 0


def test_t4_fallback_stops_at_portable_artifacts(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t4"
    # A given width plan: the analytic T4 model prices this tiny CNN as pure launch overhead.
    widths = tmp_path / "widths.json"
    widths.write_text(json.dumps({"keep": {"0": 32}}))
    rc = main(["build", str(tiny), "--target", "t4", "--widths", str(widths), "--out", str(out), "--json", *BASE])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert "hadmc-deploy engine" in result["fallback_message"] and "TensorRT" in result["fallback_message"]
    for f in ("pruned.pth", "model.onnx", "qdq_s8s8.onnx", "calibration.cache", "scales.json"):
        assert (out / f).is_file(), f
    assert statuses(out)["backend build"] == "stopped"
    report = json.loads((out / "report.json").read_text())
    assert not (out / "artifacts").exists()
    int8 = next(v for v in report["variants"] if v["name"] == "pruned-int8")
    assert int8["accuracy"] is not None and int8["latency"] == {}
    assert "portable ONNX" in int8["accuracy_measured_with"]


def test_t4_budget_without_tensorrt_exits_13_after_the_portable_artifacts(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A latency budget that nothing here could measure is not reported as met: exit 13 (backend
    unavailable), one line naming the resume command for the target host, and every portable
    artifact and the report written, as without a budget."""
    out = tmp_path / "t4b"
    # a budget the analytic T4 model meets at full width (nothing is pruned): only the measurement is missing
    rc = main(["build", str(tiny), "--target", "t4", "--latency-ms", "1000", "--out", str(out), *BASE])
    assert rc == 13
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if "latency budget" in x)
    assert "1000 ms was not measured on the t4" in line and f"hadmc-deploy build --resume {out}" in line
    for f in ("model.onnx", "baseline_qdq_s8s8.onnx", "baseline_calibration.cache", "baseline_scales.json", "report.json", "report.md"):
        assert (out / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    assert report["deploy"] is None and report["decision"]["verdict"]["exit_code"] == 13
    assert statuses(out)["latency check"] in ("skipped", "done") and statuses(out)["backend build"] == "stopped"


def test_t4_budget_with_cpu_fallback_is_not_judged_on_the_cpu(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--fallback cpu builds and times ONNX Runtime artifacts, but their speedup is not the T4's:
    the budget stays unmeasured (exit 13) and the line says what the CPU measured."""
    out = tmp_path / "t4f"
    rc = main(["build", str(tiny), "--target", "t4", "--precision", "int8", "--fallback", "cpu", "--latency-ms", "1000", "--out", str(out), *BASE])
    assert rc == 13
    line = next(x for x in capsys.readouterr().err.splitlines() if "latency budget" in x)
    assert "on the cpu fallback only" in line
    report = json.loads((out / "report.json").read_text())
    assert report["deploy"] is not None and (out / report["deploy"]["artifact"]).is_dir()
