"""TensorRT-backend helpers that need no GPU: profiles, compatibility, fallback, calibrator feeding, FP16 graphs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tensorrt_fake_module import fake_trt_10
from tensorrt_models import requires_no_tensorrt, tiny_cnn

from hadmc_deploy.backends import get
from hadmc_deploy.backends.tensorrt_artifact import (
    batch_triple_from_sizes,
    check_compatible,
    compatibility_problem,
    derive_profile,
    fallback_message,
    onnx_input_shapes,
    parse_batch_triple,
    portable_artifacts,
    sibling_qdq,
    timing_cache_path,
)
from hadmc_deploy.backends.tensorrt_calibrator import make_calibrator
from hadmc_deploy.calibration import trt_cache
from hadmc_deploy.errors import ArtifactError, DataError, UsageError
from hadmc_deploy.targets import T4

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4", "compute_capability": "7.5", "hardware_compatibility": "none"}


# -- availability ---------------------------------------------------------------------
@requires_no_tensorrt
def test_available_is_false_with_one_line_reason_here():
    ok, reason = get("tensorrt").available()
    assert ok is False
    assert "\n" not in reason and "tensorrt" in reason.lower()
    assert get("tensorrt").describe_device() == {"backend": "tensorrt", "available": False, "reason": reason}


def test_import_hadmc_deploy_does_not_import_tensorrt():
    code = "import sys, hadmc_deploy, hadmc_deploy.backends.tensorrt, hadmc_deploy.triton; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


# -- profiles -------------------------------------------------------------------------
def test_profile_from_target_batch_sizes(tmp_path):
    shapes = onnx_input_shapes(tiny_cnn(tmp_path / "m.onnx", channels=3, hw=32))
    assert shapes == {"input": ["N", 3, 32, 32]}
    profile = derive_profile(shapes, batch_triple_from_sizes(T4.batch_sizes))
    assert profile == {"input": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}}


def test_profile_fixed_batch_graph_keeps_its_batch(tmp_path):
    shapes = onnx_input_shapes(tiny_cnn(tmp_path / "m.onnx", batch=4))
    assert derive_profile(shapes, (1, 8, 32))["input"] == {"min": [4, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [4, 1, 8, 8]}


def test_profile_refuses_dynamic_spatial_axes(tmp_path):
    shapes = onnx_input_shapes(tiny_cnn(tmp_path / "m.onnx", hw="H"))
    with pytest.raises(UsageError, match="dynamic axes"):
        derive_profile(shapes, (1, 1, 1))


@pytest.mark.parametrize(("text", "triple"), [("1,8,32", (1, 8, 32)), ("16", (16, 16, 16)), (" 2, 2 ,4", (2, 2, 4))])
def test_parse_batch_triple(text, triple):
    assert parse_batch_triple(text) == triple


@pytest.mark.parametrize("text", ["8,1,32", "0,1,2", "1,2", "a,b,c"])
def test_parse_batch_triple_rejects(text):
    with pytest.raises(UsageError):
        parse_batch_triple(text)


def test_batch_triple_from_sizes():
    assert batch_triple_from_sizes((32, 1, 8)) == (1, 8, 32)
    assert batch_triple_from_sizes((4,)) == (4, 4, 4)
    assert batch_triple_from_sizes((1, 16)) == (1, 16, 16)


# -- compatibility --------------------------------------------------------------------
def test_same_gpu_and_version_is_compatible():
    assert compatibility_problem(BUILT, {"tensorrt_version": "10.3.0.26", "gpu_name": "Tesla T4", "compute_capability": "7.5"}) is None


@pytest.mark.parametrize(("here", "words"), [
    ({"tensorrt_version": "10.4.0", "gpu_name": "Tesla T4", "compute_capability": "7.5"}, "TensorRT 10.3.0 and this host has TensorRT 10.4.0"),
    ({"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A10", "compute_capability": "8.6"}, "compute capability 7.5"),
    ({"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4 16GB", "compute_capability": "7.5"}, "built for a Tesla T4"),
])
def test_other_gpu_or_version_is_refused_with_reason(here, words):
    problem = compatibility_problem(BUILT, here)
    assert problem is not None and words in problem
    with pytest.raises(ArtifactError) as info:
        check_compatible(BUILT, here, "eng")
    assert words in info.value.one_line() and "hadmc-deploy engine" in info.value.one_line()


def test_hardware_compatible_engine_moves_between_ampere_plus_gpus():
    built = {**BUILT, "gpu_name": "NVIDIA A100", "compute_capability": "8.0", "hardware_compatibility": "ampere_plus"}
    assert compatibility_problem(built, {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}) is None
    assert "compute capability >= 8.0" in compatibility_problem(built, {"tensorrt_version": "10.3.0", "gpu_name": "Tesla T4", "compute_capability": "7.5"})


def test_missing_version_in_metadata_is_refused():
    assert "does not record" in compatibility_problem({}, {"tensorrt_version": "10.3.0"})


def test_timing_cache_path_is_per_gpu_and_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HADMC_CACHE_DIR", str(tmp_path))
    a = timing_cache_path("Tesla T4", "10.3.0")
    assert a == tmp_path / "trt-timing-tesla-t4-10.3.0.cache"
    assert a != timing_cache_path("NVIDIA A10", "10.3.0") != timing_cache_path("Tesla T4", "10.4.0")


# -- portable artifacts and the fallback message -----------------------------------------
def test_portable_artifacts_and_fallback_message(tmp_path):
    build = tmp_path / "build"
    tiny_cnn((build / "onnx").mkdir(parents=True) or build / "onnx" / "model.onnx")
    (build / "calibration").mkdir()
    (build / "calibration" / "qdq_s8s8.onnx").write_bytes(b"x")
    trt_cache.write_cache(build / "calibration" / "calibration.cache", {"input": 1.0})
    (build / "calibration" / "scales.json").write_text("{}")
    found = portable_artifacts(build)
    assert set(found) == {"float_onnx", "qdq_onnx", "calibration_cache", "scales"}
    message = fallback_message(build, T4, "the tensorrt Python module is not installed")
    assert f"hadmc-deploy engine {build} --precision int8 --target t4 -o {build / 'engine'}" in message
    assert "onnx/model.onnx" in message and "calibration/calibration.cache" in message
    assert "not installed" in message and "\n" not in message


def test_portable_artifacts_pair_the_baseline_files(tmp_path):
    """An unpruned build writes baseline.onnx + baseline_qdq_s8s8.onnx; they are found together."""
    tiny_cnn(tmp_path / "baseline.onnx")
    (tmp_path / "baseline_qdq_s8s8.onnx").write_bytes(b"x")
    (tmp_path / "qdq_s8s8.onnx").write_bytes(b"stray")  # of no float graph here: not paired with the baseline
    found = portable_artifacts(tmp_path)
    assert found == {"float_onnx": tmp_path / "baseline.onnx", "qdq_onnx": tmp_path / "baseline_qdq_s8s8.onnx"}


def test_portable_artifacts_of_a_build_that_pruned_nothing(tmp_path):
    """Nothing pruned: model.onnx is the baseline's copy, and only the baseline's QDQ graph and
    calibration cache exist; the engine command must get those, not a float graph without them."""
    tiny_cnn(tmp_path / "baseline.onnx")
    tiny_cnn(tmp_path / "model.onnx")
    (tmp_path / "baseline_qdq_s8s8.onnx").write_bytes(b"x")
    trt_cache.write_cache(tmp_path / "baseline_calibration.cache", {"input": 1.0})
    found = portable_artifacts(tmp_path)
    assert found["float_onnx"] == tmp_path / "baseline.onnx" and found["qdq_onnx"] == tmp_path / "baseline_qdq_s8s8.onnx"
    assert found["calibration_cache"] == tmp_path / "baseline_calibration.cache"
    assert sibling_qdq(tmp_path / "baseline.onnx", "calibration_cache") == tmp_path / "baseline_calibration.cache"
    assert sibling_qdq(tmp_path / "model.onnx", "calibration_cache") == tmp_path / "calibration.cache"


# -- calibrator (fake tensorrt base class, CPU tensors) --------------------------------------
def test_fake_module_calibrator_feeds_full_batches_then_stops(tmp_path):
    """Fake-module test: the calibrator subclass feeds whole batches of our data and ends with None."""
    x = np.arange(10 * 1 * 2 * 2, dtype=np.float32).reshape(10, 1, 2, 2)
    seen = []
    cal = make_calibrator(fake_trt_10(), input_name="input", cache_path=tmp_path / "c.cache", data=x, batch_size=4,
                          device="cpu", on_batch=lambda: seen.append(1))
    assert type(cal).__mro__[1].__name__ == "IInt8EntropyCalibrator2"
    assert cal.get_batch_size() == 1
    first = cal.get_batch(["input"])
    assert isinstance(first[0], int) and np.array_equal(cal.feeder.buffer.numpy(), x[:4])
    assert cal.get_batch(["input"]) is not None and np.array_equal(cal.feeder.buffer.numpy(), x[4:8])
    assert cal.get_batch(["input"]) is None  # 2 leftover samples are not padded into a fake batch
    assert len(seen) == 2
    # TensorRT's trampoline would swallow a raise: the error is kept on the calibrator instead
    assert cal.get_batch(["other"]) is None and isinstance(cal.error, DataError) and "'input'" in str(cal.error)


def test_fake_module_calibrator_cache_round_trip(tmp_path):
    """Fake-module test: read/write_calibration_cache round-trip our cache format (MinMax header retargeted)."""
    amax = {"input": 2.5, "/conv/Conv_output_0": 0.75}
    path = trt_cache.write_cache(tmp_path / "calibration.cache", amax, trt_version="8.6.1")
    cal = make_calibrator(fake_trt_10(), input_name="input", cache_path=path, algo="minmax")
    served = cal.read_calibration_cache()
    assert served.decode().splitlines()[0] == "TRT-100300-MinMaxCalibration"
    assert cal.cache.read_from_file
    cal.write_calibration_cache(memoryview(served))
    assert trt_cache.read_cache(path) == {k: pytest.approx(v / 127) for k, v in amax.items()}
    assert trt_cache.read_header(path) == (100300, "MinMaxCalibration")


def test_calibrator_needs_data_or_cache(tmp_path):
    with pytest.raises(UsageError, match="calibration data or an existing calibration.cache"):
        make_calibrator(fake_trt_10(), input_name="input", cache_path=tmp_path / "none.cache")


def test_calibrator_rejects_too_little_data(tmp_path):
    with pytest.raises(DataError, match="one full batch"):
        make_calibrator(fake_trt_10(), input_name="input", cache_path=None, data=np.zeros((3, 1, 2, 2), np.float32), batch_size=8, device="cpu")


# -- FP16-typed graph for strongly typed TensorRT -----------------------------------------
def test_fp16_typed_graph_runs_and_matches_fp32(tmp_path):
    """Real conversion (onnxconverter-common) checked in ONNX Runtime: FP16 weights inside, FP32 I/O."""
    pytest.importorskip("onnxconverter_common")
    from hadmc_deploy.backends.tensorrt_build import fp16_typed_onnx

    src = tiny_cnn(tmp_path / "model.onnx", channels=3, hw=16)
    dst, converter = fp16_typed_onnx(src, tmp_path / "model_fp16.onnx")
    model = onnx.load(str(dst))
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.dtype == np.float32 and converter.startswith("onnxconverter")
    np.testing.assert_allclose(got, ref, rtol=1e-2, atol=1e-2)


def test_tensorrt_keeps_its_engine_sessions_when_timings_release_sessions():
    """Whole-model timings call release_sessions after each model (idle ONNX Runtime sessions spin
    on the CPU); TensorRT keeps its deserialized engines, which hold no CPU thread while idle."""
    backend = get("tensorrt")
    backend._sessions[("engine.plan", 0.0)] = "kept"
    backend.release_sessions()
    assert backend._sessions == {("engine.plan", 0.0): "kept"}
