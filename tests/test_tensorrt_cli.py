"""`hadmc-deploy engine` on a machine without TensorRT: input checks first, then the clear unavailability error."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
from tensorrt_models import requires_no_tensorrt, tiny_cnn, tiny_qdq_cnn

from hadmc_deploy.cli import main
from hadmc_deploy.errors import BackendUnavailableError, UsageError

#: the CLI as a subprocess, through this interpreter (no venv path assumed).
ENTRY = [sys.executable, "-m", "hadmc_deploy"]


@pytest.fixture
def build_dir(tmp_path):
    d = tmp_path / "build"
    d.mkdir()
    tiny_cnn(d / "model.onnx")
    tiny_qdq_cnn(d / "qdq_s8s8.onnx")
    return d


@requires_no_tensorrt
def test_engine_command_exits_with_unavailability_reason(build_dir, tmp_path):
    proc = subprocess.run([*ENTRY, "engine", str(build_dir), "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == BackendUnavailableError.exit_code
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot build the TensorRT engine here" in lines[0] and "tensorrt Python module is not installed" in lines[0]
    assert "GPU host" in lines[0]
    assert not (tmp_path / "out").exists()


@requires_no_tensorrt
def test_engine_command_json_error(build_dir, tmp_path, capsys):
    code = main(["engine", str(build_dir), "-o", str(tmp_path / "out"), "--precision", "fp16", "--json"])
    assert code == BackendUnavailableError.exit_code
    assert '"error_type": "BackendUnavailableError"' in capsys.readouterr().out


@pytest.mark.parametrize(("args", "words"), [
    (["--batch", "8,1,32"], "MIN <= OPT <= MAX"),
    (["--target", "cpu"], "not TensorRT"),
    (["--calib-cache", "/nonexistent/calibration.cache", "--int8-mode", "calibrator"], "does not exist"),
    (["--workspace-mb", "0"], "--workspace-mb"),
])
def test_engine_command_checks_options_before_backend(build_dir, tmp_path, capsys, args, words):
    assert main(["engine", str(build_dir), "-o", str(tmp_path / "o"), *args]) == UsageError.exit_code
    assert words in capsys.readouterr().err


@requires_no_tensorrt
def test_engine_command_int8_qdq_needs_the_qdq_graph(tmp_path, capsys):
    d = tmp_path / "b"
    d.mkdir()
    tiny_cnn(d / "model.onnx")
    assert main(["engine", str(d), "-o", str(tmp_path / "o")]) == UsageError.exit_code
    assert "no QDQ graph (qdq_s8s8.onnx)" in capsys.readouterr().err
    # the calibrator path with no cache and no data says what it needs
    assert main(["engine", str(d), "-o", str(tmp_path / "o"), "--int8-mode", "calibrator"]) == UsageError.exit_code
    assert "calibration.cache" in capsys.readouterr().err
    # FP32 needs only the float graph: it gets as far as the backend check
    assert main(["engine", str(d / "model.onnx"), "-o", str(tmp_path / "o"), "--precision", "fp32"]) == BackendUnavailableError.exit_code


def test_engine_command_missing_source(tmp_path, capsys):
    assert main(["engine", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")]) == UsageError.exit_code
    assert "neither a build directory nor an .onnx file" in capsys.readouterr().err


@requires_no_tensorrt
def test_check_tensorrt_tool_without_tensorrt_exits_with_one_line(tmp_path):
    tool = Path(__file__).resolve().parents[1] / "tools" / "check_tensorrt.py"
    proc = subprocess.run([sys.executable, str(tool), "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 13
    assert proc.stderr.strip().count("\n") == 0 and "tensorrt Python module is not installed" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no half-written tables


def test_check_tensorrt_markdown_renders_every_row_kind():
    """Formatting only: the rows are hand-made to exercise ok / skipped / error cells, not results."""
    check_tensorrt = _tool()
    lat = {"p50_ms": 1.0, "p99_ms": 2.0, "throughput": 1000.0}
    report = {
        "command": "python tools/check_tensorrt.py", "host": "h", "elapsed_s": 1.0, "batches": [1, 8],
        "device": {"gpu_name": "G", "compute_capability": "7.5", "tensorrt_version": "10.3.0", "cuda_runtime": "12.4"},
        "models": {"demo": {"data": "d", "export_max_abs_err": 0.0, "variants": [
            {"variant": "fp32", "path": "fp32", "build_s": 1.0, "max_abs_err": 0.0, "max_rel_err": 0.0, "top1_agreement": 1.0,
             "layers": {"layers": 5, "int8_layers": 0}, "latency": {"1": lat, "8": lat}},
            {"variant": "int8-calibrator-cache", "skipped": "no implicit calibration"},
            {"variant": "fp16", "error": "ExportError: x"},
        ], "ratios": [{"variant": "int8-qdq", "over": "fp16", "speedup": {"1": 1.21, "8": 1.4}}]}},
    }
    text = check_tensorrt.markdown(report)
    rows = [line for line in text.split("Speedup")[0].splitlines() if line.startswith(("| fp32", "| int8", "| fp16"))]
    assert len(rows) == 3 and "1.000/2.000" in rows[0] and "no implicit calibration" in rows[1]
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert rows[0].count("|") == header.count("|")
    assert "| int8-qdq | fp16 | 1.21x | 1.40x |" in text


def _tool():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import check_tensorrt

    return check_tensorrt


def test_check_tensorrt_ratios_compare_int8_with_fp16_and_fp32():
    """Arithmetic only, on hand-made latencies: FP16 p50 / INT8 p50 is the INT8 gain a T4 user would see."""
    lat = lambda ms: {"1": {"p50_ms": ms}, "8": {"p50_ms": 2 * ms}}  # noqa: E731
    rows = [{"variant": "fp32", "latency": lat(4.0)}, {"variant": "fp16", "latency": lat(1.5)},
            {"variant": "int8-qdq", "latency": lat(1.25)}, {"variant": "int8-calibrator-device", "error": "x"}]
    ratios = {(r["variant"], r["over"]): r["speedup"] for r in _tool().speed_ratios(rows, [1, 8])}
    assert ratios[("int8-qdq", "fp16")] == {"1": pytest.approx(1.2), "8": pytest.approx(1.2)}
    assert ratios[("int8-qdq", "fp32")]["1"] == pytest.approx(3.2) and ratios[("fp16", "fp32")]["8"] == pytest.approx(4 / 1.5)
    assert not any(v == "int8-calibrator-device" for v, _ in ratios)


def test_check_tensorrt_device_calibration_gets_data_and_no_cache(tmp_path):
    """The device-calibration row asks for fresh calibration (data, no cache); the CPU-cache row for the cache only."""
    tool = _tool()
    features = types.SimpleNamespace(implicit_calibration=True, version="10.3.0")
    prep = {"onnx": tiny_cnn(tmp_path / "m.onnx"), "qdq": tiny_qdq_cnn(tmp_path / "q.onnx"), "cache": tmp_path / "c.cache", "calib": "DATA"}
    prep["cache"].write_text("TRT-100300-EntropyCalibration2\n")
    reqs = {v: tool.variant_request(v, p, o, prep, tmp_path / v, (1, 8, 32), None) for v, p, o, _ in tool.variants(features)}
    assert [r.precision for r in reqs.values()] == ["fp32", "fp16", "int8", "int8", "int8"]
    device = reqs["int8-calibrator-device"]
    assert device.calibration_data == "DATA" and device.calibration_cache is None and device.qdq_graph is None
    assert device.trt.int8_mode == "calibrator" and device.trt.batch == (1, 8, 32)
    assert reqs["int8-calibrator-cpu-cache"].calibration_cache == prep["cache"] and reqs["int8-calibrator-cpu-cache"].calibration_data is None
    assert reqs["int8-qdq"].qdq_graph == prep["qdq"] and reqs["fp16"].qdq_graph is None
    eleven = tool.variants(types.SimpleNamespace(implicit_calibration=False, version="11.1.0"))
    assert [o is None for _, _, o, _ in eleven] == [False, False, False, True, True]


def test_engine_calibration_images_are_preprocessed_as_the_build_did(tmp_path):
    """--calib data for the TensorRT calibrator takes the ONNX input's channels and size and the
    --mean/--std the build recorded in plan.json (the build directory, or a folder above the ONNX
    file); it was read with the defaults, unresized."""
    from hadmc_deploy.commands.engine import calib_preprocess

    build = tmp_path / "build"
    (build / "artifacts" / "cpu").mkdir(parents=True)
    onnx_path = tiny_cnn(build / "artifacts" / "cpu" / "model.onnx", channels=3, hw=24)
    (build / "plan.json").write_text('{"options": {"mean": [0.1, 0.2, 0.3], "std": [0.5], "input_shape": null}}')
    pre = calib_preprocess(onnx_path, build)
    assert (pre.resize, pre.channels, pre.mean, pre.std) == ((24, 24), 3, (0.1, 0.2, 0.3), (0.5,))
    assert calib_preprocess(onnx_path, onnx_path).mean == (0.1, 0.2, 0.3)  # found above the ONNX file
    alone = tiny_cnn(tmp_path / "alone.onnx", channels=1, hw="H")
    pre = calib_preprocess(alone, alone)
    assert (pre.resize, pre.channels, pre.mean) == (None, 1, None)  # a symbolic size is not resized to
