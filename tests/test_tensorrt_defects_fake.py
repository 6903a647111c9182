"""Issue 15's defects, one test each, on FAKE tensorrt modules (plus the packaging and cache-format checks).

Every `test_fake_module_*` test here runs our code against `tensorrt_fake_module`, which
copies the real bindings' enums, calibrator trampolines and failure modes but builds
and runs nothing. They show our checks and plumbing behave as the bindings require;
they are not evidence that an engine builds or runs (tools/check_tensorrt.py on a GPU
host is). Device buffers are CPU torch tensors here.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tensorrt_fake_module import fake_installer, fake_trt_10, fake_trt_11, make_fake_trt
from tensorrt_models import tiny_cnn, tiny_qdq_cnn

import hadmc_deploy.backends.tensorrt as trt_backend
import hadmc_deploy.backends.tensorrt_calibrator as trt_calibrator
import hadmc_deploy.backends.tensorrt_runtime as trt_runtime
from hadmc_deploy.backends import Artifact, BuildRequest, TrtBuildOptions
from hadmc_deploy.calibration import trt_cache
from hadmc_deploy.errors import ArtifactError, BackendUnavailableError, DataError, UsageError
from hadmc_deploy.targets import T4

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
OPTS = TrtBuildOptions(use_timing_cache=False)


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake tensorrt module, a fake T4 description and CPU buffers; returns the installer."""
    return fake_installer(monkeypatch, cpu_buffers=True)


def _calls(trt, name):
    return [c for c in trt.calls if c[0] == name]


def _build(request: BuildRequest) -> Artifact:
    return trt_backend.TensorRTBackend()._build(request)


def _data(n: int, c: int = 1, hw: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, c, hw, hw)).astype(np.float32)


# -- 1: calibration data checked against the engine input ---------------------------------
def test_fake_module_calibration_data_of_another_shape_is_refused_before_the_build(tmp_path, use_fake):
    """Fake-module test: 1x28x28 data for a 3x8x8 input is a DataError before TensorRT is asked to build."""
    trt = use_fake(fake_trt_10())
    model = tiny_cnn(tmp_path / "m.onnx", channels=3)
    request = BuildRequest(model, "int8", tmp_path / "e", T4, calibration_data=_data(64, 1, 28), trt=OPTS)
    with pytest.raises(DataError, match=r"shape \(1, 28, 28\).*takes \(3, 8, 8\)"):
        _build(request)
    assert _calls(trt, "build_serialized_network") == [] and not (tmp_path / "e").exists()


def test_fake_module_static_batch_input_calibrates_at_its_own_batch(tmp_path, use_fake):
    """Fake-module test: a fixed batch of 2 gets no calibration profile and batches of 2; too few samples is refused."""
    trt = use_fake(fake_trt_10())
    model = tiny_cnn(tmp_path / "m.onnx", batch=2)
    art = _build(BuildRequest(model, "int8", tmp_path / "e", T4, calibration_data=_data(7), trt=OPTS))
    assert _calls(trt, "set_calibration_profile") == []
    assert _calls(trt, "calibrated_batches") == [("calibrated_batches", 3)]  # 7 samples -> 3 full batches of 2
    assert art.metadata["calibration"]["batch"] == 2 and art.metadata["calibration"]["static_batch"]
    assert art.metadata["profile"]["input"]["max"] == [2, 1, 8, 8]
    with pytest.raises(DataError, match="fixed batch of 2"):
        _build(BuildRequest(model, "int8", tmp_path / "f", T4, calibration_data=_data(1), trt=OPTS))


# -- 2: errors the calibrator trampolines swallow reach the user ----------------------------
def test_fake_module_error_swallowed_inside_get_batch_is_raised_after_the_build(tmp_path, use_fake, monkeypatch):
    """Fake-module test: get_batch raising (as in pyInt8.cpp, printed and swallowed) surfaces as that DataError."""
    trt = use_fake(fake_trt_10())

    def broken(self):
        raise DataError("calibration batch 0 could not be copied to the device")

    monkeypatch.setattr(trt_calibrator.BatchFeeder, "next_pointer", broken)
    with pytest.raises(DataError, match="could not be copied"):
        _build(BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "int8", tmp_path / "e", T4, calibration_data=_data(8), trt=OPTS))
    assert _calls(trt, "build_serialized_network") and not (tmp_path / "e").exists()


def test_fake_module_trampolines_swallow_calibrator_exceptions(capsys):
    """Fake-module test of the fake itself: like pyInt8.cpp, an exception in get_batch is printed and becomes
    "no batch", so a raw calibrator's error never reaches the caller (why ours records it instead)."""
    trt = fake_trt_10()

    class Raw(trt.IInt8EntropyCalibrator2):
        def read_calibration_cache(self):
            return None

        def get_batch(self, names):
            raise DataError("lost")

    builder = trt.Builder(None)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    config.int8_calibrator = Raw()

    class Logger:
        def log(self, severity, msg):
            self.last = msg

    builder.logger = Logger()
    assert builder.build_serialized_network(network, config) is None
    assert "Calibration failure" in builder.logger.last
    assert "[ERROR] Exception caught in get_batch(): lost" in capsys.readouterr().err


def test_fake_module_unreadable_cache_is_refused_before_the_build(tmp_path, use_fake):
    """Fake-module test: a calibration cache that is not TensorRT's format fails before build_serialized_network."""
    trt = use_fake(fake_trt_10())
    bad = tmp_path / "calibration.cache"
    bad.write_text("this is not a calibration cache\n")
    with pytest.raises(DataError, match="not a TensorRT calibration cache"):
        _build(BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "int8", tmp_path / "e", T4, calibration_cache=bad, trt=OPTS))
    assert _calls(trt, "build_serialized_network") == []


# -- 4: output buffers stay alive while bound --------------------------------------------
def test_fake_module_timing_keeps_bound_buffers_alive(use_fake):
    """Fake-module test: the addresses bound for timing belong to tensors the session still holds."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True))
    session = trt_runtime.EngineSession(trt, b"engine", "e")
    session.bind_random({"input": (32, 1, 64, 64)})
    gc.collect()
    # every address the context holds belongs to a tensor the session keeps (the old code dropped the outputs)
    assert session.context.addresses == {name: t.data_ptr() for name, t in session.bound.items()}
    assert set(session.bound) == {"input", "output"} and tuple(session.bound["output"].shape) == (32, 4)


def test_fake_module_missing_execution_context_is_an_artifact_error(use_fake):
    """Fake-module test: create_execution_context() returning None is reported, not used."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True, context_fails=True))
    with pytest.raises(ArtifactError, match="could not create an execution context"):
        trt_runtime.EngineSession(trt, b"engine", "e")


def test_fake_module_run_deserializes_the_engine_once(tmp_path, use_fake):
    """Fake-module test: repeated run() on one artifact reuses the deserialized engine."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True))
    backend = trt_backend.TensorRTBackend()
    art = backend._build(BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "fp32", tmp_path / "e", T4, trt=OPTS))
    before = len(_calls(trt, "deserialize_cuda_engine"))  # the build's layer summary deserializes once
    for _ in range(3):
        backend._run(art, {"input": np.zeros((2, 1, 8, 8), np.float32)})
    assert len(_calls(trt, "deserialize_cuda_engine")) == before + 1


# -- 5: a rebuild calibrates afresh ---------------------------------------------------------
def test_fake_module_rebuild_calibrates_afresh_instead_of_reading_the_old_cache(tmp_path, use_fake):
    """Fake-module test: the second build into the same directory calibrates on the data again."""
    trt = use_fake(fake_trt_10())
    request = BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "int8", tmp_path / "e", T4, calibration_data=_data(64),
                           trt=TrtBuildOptions(int8_mode="calibrator", calib_batch=16, use_timing_cache=False))
    first = _build(request)
    assert (first.path / "calibration.cache").is_file()  # TensorRT wrote what it calibrated
    second = _build(request)
    assert _calls(trt, "calibrated_batches") == [("calibrated_batches", 4)] * 2 and _calls(trt, "calibration_cache_used") == []
    assert second.metadata["calibration"]["read_from_cache"] is False
    assert "device calibration" in second.metadata["calibration"]["source"]


# -- 6: no builder -------------------------------------------------------------------------
def test_fake_module_builder_type_error_is_backend_unavailable(tmp_path, use_fake):
    """Fake-module test: trt.Builder raising TypeError (the binding never returns None) becomes a one-line error."""
    use_fake(make_fake_trt("10.3.0", builder_fails=True))
    with pytest.raises(BackendUnavailableError, match="could not create a builder"):
        _build(BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "fp32", tmp_path / "e", T4, trt=OPTS))


# -- 7: the extra matches the README -----------------------------------------------------------
def test_tensorrt_extra_matches_readme_and_declares_only_what_is_used():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt"]
    assert not any(dep.startswith("cuda-python") for dep in extra)  # nothing imports it
    assert "tensorrt>=8.6,<12" in extra
    assert "TensorRT 8.6, 10.x or 11" in (ROOT / "README.md").read_text()
    sources = "".join(p.read_text() for p in (ROOT / "backends").glob("*.py"))
    assert "import cuda" not in sources and "from cuda" not in sources


# -- 8: TF32, zero scales, Gemm split layers ------------------------------------------------
@pytest.mark.parametrize("make", [fake_trt_10, fake_trt_11], ids=["trt10", "trt11"])
def test_fake_module_fp32_build_clears_tf32(tmp_path, use_fake, make):
    """Fake-module test: FP32 engines clear BuilderFlag.TF32 (on by default) unless TrtBuildOptions.tf32 asks for it."""
    trt = use_fake(make())
    model = tiny_cnn(tmp_path / "m.onnx")
    _build(BuildRequest(model, "fp32", tmp_path / "a", T4, trt=OPTS))
    assert _calls(trt, "clear_flag") == [("clear_flag", "TF32")]
    _build(BuildRequest(model, "fp32", tmp_path / "b", T4, trt=TrtBuildOptions(tf32=True, use_timing_cache=False)))
    assert len(_calls(trt, "clear_flag")) == 1


def test_zero_range_gets_a_floored_scale_in_the_cache():
    _, scales = trt_cache.parse_cache(trt_cache.render_cache({"always_zero": 0.0, "x": 1.27}))
    assert scales["always_zero"] > 0 and scales["x"] == pytest.approx(0.01)


def _gemm_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(3, np.float32), "B")]
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["gemm_out"], transB=1, name="/fc/Gemm"),
             helper.make_node("Relu", ["gemm_out"], ["output"], name="/relu/Relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_fake_module_layers_the_cpu_cache_does_not_name_are_listed(tmp_path, use_fake):
    """Fake-module test: a TensorRT-made tensor inside a split Gemm has no scale in our cache; the layer is named."""
    use_fake(fake_trt_10())
    cache = trt_cache.write_cache(tmp_path / "calibration.cache", {"input": 1.0, "gemm_out": 2.0, "output": 2.0})
    art = _build(BuildRequest(_gemm_model(tmp_path / "g.onnx"), "int8", tmp_path / "e", T4, calibration_cache=cache, trt=OPTS))
    assert art.metadata["calibration"]["unscaled_layers"] == ["/fc/Gemm_matmul"]
    assert art.metadata["calibration"]["read_from_cache"] is True


# -- the path the installed release supports ---------------------------------------------------
def test_fake_module_auto_int8_mode_follows_the_release(tmp_path, use_fake):
    """Fake-module test: "auto" takes the QDQ graph when there is one, the calibrator on 10.x with only a cache,
    and on 11 (no implicit INT8) says what is missing."""
    model = tiny_cnn(tmp_path / "m.onnx")
    qdq = tiny_qdq_cnn(tmp_path / "qdq_s8s8.onnx")
    cache = trt_cache.write_cache(tmp_path / "calibration.cache", {"input": 2.0, "conv_out": 5.0})
    use_fake(fake_trt_10())
    assert _build(BuildRequest(model, "int8", tmp_path / "a", T4, qdq_graph=qdq, calibration_cache=cache, trt=OPTS)).metadata["precision_path"] == "explicit-qdq-flags"
    assert _build(BuildRequest(model, "int8", tmp_path / "b", T4, calibration_cache=cache, trt=OPTS)).metadata["precision_path"] == "implicit-calibrator-entropy"
    trt11 = use_fake(fake_trt_11())
    with pytest.raises(UsageError, match="QDQ graph"):
        _build(BuildRequest(model, "int8", tmp_path / "c", T4, calibration_cache=cache, trt=OPTS))
    assert _calls(trt11, "build_serialized_network") == []


def test_fake_module_fp16_variant_for_the_int8_baseline(tmp_path, use_fake):
    """Fake-module test: an fp16 request builds with the FP16 flag on 10.x (the baseline INT8 must beat on a T4)."""
    trt = use_fake(fake_trt_10())
    art = _build(BuildRequest(tiny_cnn(tmp_path / "m.onnx"), "fp16", tmp_path / "h", T4, trt=OPTS))
    assert _calls(trt, "build_serialized_network") == [("build_serialized_network", ("FP16",))]
    meta = json.loads((art.path / "metadata.json").read_text())
    assert meta["precision"] == "fp16" and meta["precision_path"] == "fp16-flag" and meta["target"] == "t4"
