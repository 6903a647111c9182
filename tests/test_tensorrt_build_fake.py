"""The build flow's call sequence per TensorRT release, on FAKE tensorrt modules.

Every test here is a fake-module test: `tensorrt_fake_module` records which
TensorRT API calls our code makes and returns placeholder bytes. They check the
flags, profiles, calibrator and timing cache we hand TensorRT, and the artifact
metadata we write. None of them is evidence that an engine builds: that is
tools/check_tensorrt.py's job on a GPU host.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorrt_fake_module import (
    FAKE_ENGINE,
    fake_installer,
    fake_trt_10,
    fake_trt_11,
    make_fake_trt,
)
from tensorrt_models import tiny_cnn, tiny_qdq_cnn

import hadmc_deploy.backends.tensorrt as trt_backend
from hadmc_deploy.backends.base import Artifact
from hadmc_deploy.backends.request import BuildRequest, TrtBuildOptions
from hadmc_deploy.backends.tensorrt_build import EngineBuildSpec, build_engine
from hadmc_deploy.backends.tensorrt_calibrator import make_calibrator
from hadmc_deploy.backends.tensorrt_features import detect_features, plan_precision
from hadmc_deploy.calibration import trt_cache
from hadmc_deploy.errors import ArtifactError, ExportError, UsageError
from hadmc_deploy.targets import T4

NO_TIMING = TrtBuildOptions(use_timing_cache=False)


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake tensorrt module and a fake T4 device description; returns an installer."""
    return fake_installer(monkeypatch, cpu_buffers=False)


def _calls(trt, name):
    return [c for c in trt.calls if c[0] == name]


def test_fake_module_trt10_qdq_call_sequence(tmp_path):
    """Fake-module test (TRT 10.x): QDQ graph parsed, create_network(0), INT8|FP16 flags, workspace, profile, timing cache."""
    trt = fake_trt_10()
    onnx_path = tiny_qdq_cnn(tmp_path / "qdq_s8s8.onnx")
    plan = plan_precision(detect_features(trt), "int8", "qdq")
    req = EngineBuildSpec(onnx_path, plan, {"input": {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]}},
                       workspace_bytes=256 << 20, timing_cache=tmp_path / "timing.cache")
    result = build_engine(trt, req)
    names = [c[0] for c in trt.calls]
    assert names.index("create_network") < names.index("parse_from_file") < names.index("set_memory_pool_limit") < names.index("build_serialized_network")
    assert _calls(trt, "create_network") == [("create_network", 0)]
    assert _calls(trt, "build_serialized_network") == [("build_serialized_network", ("INT8", "FP16"))]
    assert _calls(trt, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    assert _calls(trt, "add_optimization_profile")[0][1] == {"input": ([1, 1, 8, 8], [8, 1, 8, 8], [32, 1, 8, 8])}
    assert "QuantizeLinear" in _calls(trt, "parsed_ops")[0][1]
    assert result.engine == FAKE_ENGINE
    assert result.inputs == [{"name": "input", "dtype": "FLOAT", "shape": [-1, 1, 8, 8]}]
    # the timing cache is created empty, set with ignore_mismatch=False, and saved after the build
    assert _calls(trt, "create_timing_cache") == [("create_timing_cache", b"")]
    assert _calls(trt, "set_timing_cache") == [("set_timing_cache", False)]
    assert (tmp_path / "timing.cache").read_bytes() == b"FAKE-TIMING-CACHE:"
    build_engine(trt, req)  # the second build starts from the saved cache
    assert _calls(trt, "create_timing_cache")[-1] == ("create_timing_cache", b"FAKE-TIMING-CACHE:")


def test_fake_module_trt86_passes_explicit_batch(tmp_path):
    """Fake-module test (TRT 8.6): the network is created with the EXPLICIT_BATCH bit."""
    trt = make_fake_trt("8.6.1")
    plan = plan_precision(detect_features(trt), "fp32")
    build_engine(trt, EngineBuildSpec(tiny_cnn(tmp_path / "m.onnx"), plan, {"input": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [1, 1, 8, 8]}}))
    assert _calls(trt, "create_network") == [("create_network", 1)]


def test_fake_module_parser_errors_are_all_reported(tmp_path):
    """Fake-module test: every error the ONNX parser records appears in the one-line message."""
    trt = make_fake_trt("10.3.0", parser_errors=[("/conv/Conv", "Conv", "weights must be constant"), ("/pool/Pool", "MaxPool", "unsupported dilation")])
    plan = plan_precision(detect_features(trt), "fp32")
    with pytest.raises(ExportError) as info:
        build_engine(trt, EngineBuildSpec(tiny_cnn(tmp_path / "m.onnx"), plan, {}))
    text = info.value.one_line()
    assert "2 error(s)" in text and "node /conv/Conv (Conv): weights must be constant" in text and "unsupported dilation" in text


def test_fake_module_trt11_int8_build_has_no_precision_flags(tmp_path, use_fake):
    """Fake-module test (TRT 11): INT8 from the QDQ graph, no set_flag, no calibrator; metadata says strongly typed."""
    trt = use_fake(fake_trt_11())
    float_onnx = tiny_cnn(tmp_path / "model.onnx")
    qdq = tiny_qdq_cnn(tmp_path / "qdq_s8s8.onnx")
    artifact = trt_backend.TensorRTBackend()._build(BuildRequest(float_onnx, "int8", tmp_path / "engine", T4, qdq_graph=qdq,
                                                                 trt=TrtBuildOptions(fp16_rest=False, use_timing_cache=False)))
    assert artifact.model_file == "model.engine"
    assert _calls(trt, "set_flag") == [] and _calls(trt, "int8_calibrator") == []
    assert _calls(trt, "create_network") == [("create_network", 0)]
    assert "QuantizeLinear" in _calls(trt, "parsed_ops")[0][1]
    meta = json.loads((tmp_path / "engine" / "metadata.json").read_text())
    assert meta["precision_path"] == "explicit-qdq-strongly-typed" and meta["precision_plan"]["strongly_typed"]
    assert meta["tensorrt_version"] == "11.4.0" and meta["gpu_name"] == "Tesla T4" and meta["compute_capability"] == "7.5"
    assert meta["profile"]["input"] == {"min": [1, 1, 8, 8], "opt": [8, 1, 8, 8], "max": [32, 1, 8, 8]}
    assert meta["input_names"] == ["input"] and meta["output_names"] == ["output"]
    assert meta["onnx"]["path"].endswith("qdq_s8s8.onnx") and len(meta["onnx"]["sha256"]) == 64
    assert meta["calibration"]["kind"] == "qdq-scales-in-onnx"
    assert (tmp_path / "engine" / "model.engine").read_bytes() == FAKE_ENGINE
    assert Artifact.load(tmp_path / "engine").backend == "tensorrt"


def test_fake_module_trt10_calibrator_reads_our_cache(tmp_path, use_fake):
    """Fake-module test (TRT 10.x, --int8-mode calibrator): entropy calibrator set, INT8 flag, cache copied
    into the artifact and served to TensorRT with the local version's header."""
    trt = use_fake(fake_trt_10())
    float_onnx = tiny_cnn(tmp_path / "model.onnx")
    cache = trt_cache.write_cache(tmp_path / "calibration.cache", {"input": 2.0, "conv_out": 5.0}, trt_version="10.0")
    artifact = trt_backend.TensorRTBackend()._build(BuildRequest(float_onnx, "int8", tmp_path / "engine", T4, calibration_cache=cache,
                                                                 trt=TrtBuildOptions(batch=(1, 4, 16), use_timing_cache=False)))
    assert _calls(trt, "int8_calibrator") == [("int8_calibrator", "IInt8EntropyCalibrator2")]
    assert _calls(trt, "build_serialized_network") == [("build_serialized_network", ("INT8", "FP16"))]
    assert _calls(trt, "set_calibration_profile") == [("set_calibration_profile", {"input": ([4, 1, 8, 8],) * 3})]
    # what a calibrator over the artifact's cache copy hands TensorRT:
    calibrator = make_calibrator(trt, input_name="input", cache_path=artifact.path / "calibration.cache")
    text = calibrator.read_calibration_cache().decode()
    assert text.splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert trt_cache.parse_cache(text)[1] == trt_cache.read_cache(cache)
    assert artifact.metadata["precision_path"] == "implicit-calibrator-entropy"
    assert artifact.metadata["calibration"]["sha256"] is not None


def test_fake_module_qdq_mode_without_qdq_graph_is_a_usage_error(tmp_path, use_fake):
    """Fake-module test: INT8 qdq mode with only a float ONNX and no ranges says how to get the QDQ graph."""
    use_fake(fake_trt_10())
    with pytest.raises(UsageError, match="qdq_s8s8.onnx"):
        trt_backend.TensorRTBackend()._build(BuildRequest(tiny_cnn(tmp_path / "model.onnx"), "int8", tmp_path / "e", T4, trt=NO_TIMING))


def test_fake_module_run_refuses_engine_from_other_trt(tmp_path, use_fake):
    """Fake-module test: an engine built with another TensorRT is refused before deserialization."""
    trt = use_fake(fake_trt_10())
    artifact = trt_backend.TensorRTBackend()._build(BuildRequest(tiny_cnn(tmp_path / "model.onnx"), "fp32", tmp_path / "engine", T4, trt=NO_TIMING))
    other = use_fake(make_fake_trt("10.8.0"))
    with pytest.raises(ArtifactError, match="TensorRT 10.3.0 and this host has TensorRT 10.8.0"):
        trt_backend.TensorRTBackend()._run(Artifact.load(artifact.path), {"input": np.zeros((1, 1, 8, 8), np.float32)})
    assert _calls(other, "deserialize_cuda_engine") == []
    assert trt.calls  # the first module did the build
