"""The ONNX Runtime backend: build (fp32, int8) from a BuildRequest, run, benchmark, metadata, example.py, layer timing."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from export_models import TinyConvBN
from onnx import TensorProto, helper, numpy_helper

import hadmc_deploy.backends.onnxruntime as ort_backend
from hadmc_deploy import export as export_mod
from hadmc_deploy.backends import Artifact, BuildRequest, LatencyStats, OrtBuildOptions, get
from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.export import export_onnx
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import cpu_profile, detect_cpu_isa

SHAPE = (1, 1, 12, 12)


def request(src, precision, out, **kw) -> BuildRequest:
    """A BuildRequest for the host CPU target (the only target ONNX Runtime builds for)."""
    return BuildRequest(onnx_path=src, precision=precision, out_dir=out, target=kw.pop("target", cpu_profile()), **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A float ONNX exported (and verified) by export_onnx; the legacy exporter keeps this file fast."""
    torch.manual_seed(0)
    model = TinyConvBN().eval()
    path = tmp_path_factory.mktemp("src") / "tiny.onnx"
    saved = export_mod.EXPORTERS["dynamo"]
    export_mod.EXPORTERS["dynamo"] = export_mod._export_legacy
    try:
        result = export_onnx(model, SHAPE, path)
    finally:
        export_mod.EXPORTERS["dynamo"] = saved
    return model, path, result


@pytest.fixture(scope="module")
def artifact(exported, tmp_path_factory):
    _, path, _ = exported
    out = tmp_path_factory.mktemp("art") / "tiny-fp32"
    preprocess = {"mean": [0.5], "std": [0.5]}
    return get("onnxruntime").build(request(path, "fp32", out, preprocess=preprocess, ort=OrtBuildOptions(threads=1)))


def test_available_and_device():
    backend = get("onnxruntime")
    ok, reason = backend.available()
    assert ok and reason.startswith("onnxruntime ")
    device = backend.describe_device()
    assert device["isa"] == detect_cpu_isa() and device["kind"] == "cpu" and device["threads"] >= 1


def test_artifact_files_and_metadata(exported, artifact):
    _, src, result = exported
    assert sorted(p.name for p in artifact.path.iterdir()) == ["example.py", "metadata.json", "model.onnx"]
    meta = json.loads((artifact.path / "metadata.json").read_text())
    assert meta["backend"] == "onnxruntime" and meta["precision"] == "fp32" and meta["target"] == "cpu"
    assert meta["inputs"] == [{"name": "input", "shape": ["batch", 1, 12, 12], "dtype": "float32"}]
    assert meta["outputs"][0]["name"] == "output" and meta["outputs"][0]["shape"] == ["batch", 5]
    assert meta["hashes"]["source_onnx_sha256"] == sha256_file(src)
    assert meta["hashes"]["model_sha256"] == sha256_file(artifact.model_path)
    assert meta["hashes"]["ranges_sha256"] is None
    # The verification errors come from the exported file's own record.
    assert meta["verification"]["max_abs_err"] == result.max_abs_err
    assert meta["export"]["exporter"] == result.exporter
    sess = meta["session_options"]
    assert sess["intra_op_num_threads"] == 1 and sess["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert sess["offline_optimization"] is None and ort_backend.DEFAULT_OFFLINE_LEVEL is None
    assert meta["hashes"]["model_sha256"] == meta["hashes"]["source_onnx_sha256"], "the default build deploys the verified file"
    assert meta["preprocess"] == {"mean": [0.5], "std": [0.5]}
    assert meta["versions"]["onnxruntime"] == meta["backend_version"]


def test_run_matches_torch_at_batch_3(exported, artifact):
    model, _, _ = exported
    x = np.random.default_rng(3).standard_normal((3, *SHAPE[1:])).astype(np.float32)
    out = get("onnxruntime").run(artifact, {"input": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["output"], ref, rtol=1e-3, atol=1e-4)
    with pytest.raises(UsageError, match="do not match"):
        get("onnxruntime").run(artifact, {"images": x})


def test_benchmark_min_seconds_adds_runs(artifact):
    """A stretch of time on a fast model: many more runs than asked (sized by a probe), never fewer."""
    stats = get("onnxruntime").benchmark(artifact, batch=1, warmup=1, runs=3, min_seconds=0.05)
    assert stats.runs > 30  # a ~10 us model: hundreds of runs (sized by the probe), not the 3 asked
    with pytest.raises(UsageError, match="min_seconds"):
        get("onnxruntime").benchmark(artifact, batch=1, runs=3, min_seconds=-1.0)


def test_benchmark_stats(artifact):
    stats = get("onnxruntime").benchmark(artifact, batch=2, warmup=1, runs=5)
    assert isinstance(stats, LatencyStats)
    assert stats.runs == 5 and stats.batch == 2 and stats.warmup == 1
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.throughput == pytest.approx(2000.0 / stats.p50_ms)


def test_example_script_runs_with_onnxruntime_alone(artifact, tmp_path):
    res = subprocess.run([sys.executable, str(artifact.path / "example.py")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["output_shape"] == [1, 5]
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 12, 12), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    res = subprocess.run([sys.executable, str(artifact.path / "example.py"), str(tmp_path / "images.npy")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    expected = get("onnxruntime").run(artifact, {"input": (images / 255.0 - 0.5) / 0.5})["output"].argmax(1)
    assert json.loads(res.stdout)["top1"] == expected.tolist()


def test_rebuild_replaces_and_foreign_dir_is_refused(exported, tmp_path):
    _, src, _ = exported
    backend = get("onnxruntime")
    out = tmp_path / "a"
    backend.build(request(src, "fp32", out))
    second = backend.build(request(src, "fp32", out, ort=OrtBuildOptions(offline_opt="extended")))
    sess = second.metadata["session_options"]
    assert sess["offline_optimization"] == "ORT_ENABLE_EXTENDED" and 0 <= sess["offline_max_abs_err"] < 1e-4
    assert second.metadata["hashes"]["model_sha256"] != second.metadata["hashes"]["source_onnx_sha256"]
    x = np.ones((2, *SHAPE[1:]), np.float32)
    plain = backend.run(ort_backend.adhoc_artifact(src), {"input": x})["output"]
    np.testing.assert_allclose(backend.run(second, {"input": x})["output"], plain, rtol=1e-3, atol=1e-4)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        backend.build(request(src, "fp32", foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "mine"], "no staging directories left behind"


def test_failed_build_leaves_nothing(exported, tmp_path, monkeypatch):
    _, src, _ = exported

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ort_backend, "write_json_atomic", boom)
    with pytest.raises(OSError, match="disk full"):
        get("onnxruntime").build(request(src, "fp32", tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_precision_errors(exported, tmp_path):
    _, src, _ = exported
    backend = get("onnxruntime")
    with pytest.raises(UsageError, match="needs calibration ranges"):
        backend.build(request(src, "int8", tmp_path / "i8"))
    with pytest.raises(UsageError, match="fp16"):
        backend.build(request(src, "fp16", tmp_path / "h"))
    with pytest.raises(UsageError, match="TargetProfile"):
        backend.build(request(src, "fp32", tmp_path / "t", target="cpu"))
    with pytest.raises(UsageError, match="qdq_graph"):
        backend.build(request(src, "int8", tmp_path / "q", qdq_graph=tmp_path / "missing.onnx"))
    assert not (tmp_path / "i8").exists() and not (tmp_path / "q").exists()


def _calib_reader(x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.items, None)

    return Reader()


def test_prequantized_qdq_model_is_taken_as_is(exported, tmp_path):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model, src, _ = exported
    x = np.random.default_rng(0).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(src), str(qdq), _calib_reader(x), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    backend = get("onnxruntime")
    art = backend.build(request(qdq, "int8", tmp_path / "i8"))
    assert art.metadata["precision"] == "int8" and art.metadata["quantized_by"].startswith("source")
    with pytest.raises(UsageError, match="already quantized"):
        backend.build(request(qdq, "fp32", tmp_path / "f"))
    out = backend.run(art, {"input": x[:4]})["output"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:4])).numpy()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05  # int8 error, but the same function
    assert backend.benchmark(art, batch=1, warmup=1, runs=3).runs == 3


def test_int8_build_from_float_onnx_and_ranges(exported, tmp_path):
    from hadmc_deploy.calibration import collect
    from hadmc_deploy.data import ArrayDataset

    model, src, _ = exported
    x = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    data = ArrayDataset(x, np.zeros(32, np.int64), "random", {})
    ranges = collect.collect_ranges(src, data, method="minmax", num_samples=32)
    u8s8 = replace(cpu_profile(), int8_form="qdq_u8s8")
    art = get("onnxruntime").build(request(src, "int8", tmp_path / "i8", ranges=ranges, target=u8s8))
    meta = art.metadata
    assert meta["int8_form"] == "qdq_u8s8" and "write_qdq" in meta["quantized_by"]
    assert meta["hashes"]["ranges_sha256"] == ort_backend.ranges_sha256(ranges)
    assert sorted(p.name for p in art.path.iterdir()) == ["example.py", "metadata.json", "model.onnx"]
    out = get("onnxruntime").run(art, {"input": x[:4]})["output"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:4])).numpy()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05


def test_bare_onnx_as_adhoc_artifact(exported):
    _, src, _ = exported
    art = ort_backend.adhoc_artifact(src, threads=1)
    assert art.model_path == src and art.metadata["precision"] == "fp32"
    assert get("onnxruntime").benchmark(art, batch=3, warmup=0, runs=2).batch == 3
    with pytest.raises(ArtifactError):
        Artifact.load(src.parent)


def _tiny_layer_model(spec: LayerSpec, int8_form: str | None = None, opset: int = 18) -> onnx.ModelProto:
    """A private stand-in for latency.layer_onnx: one Conv (+Relu) or one Gemm, float only."""
    rng = np.random.default_rng(0)
    if spec.op == "linear":
        w = numpy_helper.from_array(rng.standard_normal((spec.out_channels, spec.in_channels)).astype(np.float32), "w")
        nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)]
        x_shape, y_shape = [spec.batch, spec.in_channels], [spec.batch, spec.out_channels]
    else:
        w = numpy_helper.from_array(rng.standard_normal((spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)).astype(np.float32), "w")
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=list(spec.stride), pads=[*spec.padding, *spec.padding], group=spec.groups)]
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
        x_shape, y_shape = [spec.batch, spec.in_channels, *spec.in_hw], [spec.batch, spec.out_channels, *spec.out_hw]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)], [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


CONV = LayerSpec("conv", 8, 16, kernel=(3, 3), padding=(1, 1), in_hw=(14, 14), out_hw=(14, 14), batch=2, bias=False, activation="relu")
LINEAR = LayerSpec("linear", 32, 10, batch=4)


@pytest.mark.parametrize("spec", [CONV, LINEAR], ids=["conv", "linear"])
def test_measure_layer_times_the_built_layer(spec, monkeypatch):
    fake = types.ModuleType("hadmc_deploy.layer_onnx")
    seen = []
    fake.layer_model = lambda s, int8_form=None, opset=18: seen.append((s, int8_form)) or _tiny_layer_model(s, int8_form, opset)
    monkeypatch.setitem(sys.modules, "hadmc_deploy.layer_onnx", fake)
    stats = get("onnxruntime").measure_layer(spec, warmup=1, runs=4)
    assert seen == [(spec, None)]
    assert stats.runs == 4 and stats.batch == spec.batch and stats.p50_ms > 0


def test_measure_layer_with_the_real_layer_builder():
    fp32 = get("onnxruntime").measure_layer(CONV, warmup=1, runs=3)
    int8 = get("onnxruntime").measure_layer(LayerSpec(**{**CONV.to_dict(), "precision": "int8", "kernel": (3, 3), "padding": (1, 1), "in_hw": (14, 14), "out_hw": (14, 14), "extra": ()}), warmup=1, runs=3)
    assert fp32.runs == 3 and int8.runs == 3 and fp32.batch == 2


def test_session_options_are_the_deployment_ones():
    so = ort_backend.session_options(threads=1)
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 1
    assert str(so.graph_optimization_level).endswith("ORT_ENABLE_ALL")
    with pytest.raises(UsageError):
        ort_backend.session_options(opt_level="max")


def test_int8_input_choice_takes_only_a_qdq_graph_in_ort_form(exported, tmp_path):
    """The request's QDQ graph is deployed only in ORT's form and placement; a TensorRT-placed one is re-rendered."""
    from hadmc_deploy.calibration import collect
    from hadmc_deploy.calibration.qdq import write_qdq
    from hadmc_deploy.data import ArrayDataset

    _, src, _ = exported
    x = np.random.default_rng(1).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    ranges = collect.collect_ranges(src, ArrayDataset(x, np.zeros(16, np.int64), "random", {}), method="minmax", num_samples=16)
    u8s8 = replace(cpu_profile(), int8_form="qdq_u8s8")
    ort_qdq = write_qdq(src, ranges, tmp_path / "qdq_u8s8.onnx", form="qdq_u8s8", placement="onnxruntime")
    trt_qdq = write_qdq(src, ranges, tmp_path / "qdq_s8s8.onnx", form="qdq_s8s8", placement="tensorrt")
    backend = get("onnxruntime")
    used = backend.build(request(src, "int8", tmp_path / "a", qdq_graph=ort_qdq, target=u8s8)).metadata
    assert "request's QDQ graph" in used["quantized_by"] and used["hashes"]["model_sha256"] == sha256_file(ort_qdq)
    rendered = backend.build(request(src, "int8", tmp_path / "b", qdq_graph=trt_qdq, ranges=ranges, target=u8s8)).metadata
    assert "write_qdq" in rendered["quantized_by"] and rendered["hashes"]["model_sha256"] != sha256_file(trt_qdq)
    with pytest.raises(UsageError, match="tensorrt placement"):
        backend.build(request(src, "int8", tmp_path / "c", qdq_graph=trt_qdq, target=u8s8))
    # a T4-form graph is not taken for a target whose form differs, even with ORT placement
    s8_ort = write_qdq(src, ranges, tmp_path / "s8_ort.onnx", form="qdq_s8s8", placement="onnxruntime")
    with pytest.raises(UsageError, match="qdq_u8s8"):
        backend.build(request(src, "int8", tmp_path / "d", qdq_graph=s8_ort, target=u8s8))


def _int8_artifact(src, out, float_nodes=()):
    from hadmc_deploy.calibration import collect
    from hadmc_deploy.data import ArrayDataset

    x = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    ranges = collect.collect_ranges(src, ArrayDataset(x, np.zeros(32, np.int64), "random", {}), method="minmax", num_samples=32)
    u8s8 = replace(cpu_profile(), int8_form="qdq_u8s8")
    return get("onnxruntime").build(request(src, "int8", out, ranges=ranges, target=u8s8, float_nodes=tuple(float_nodes))), x


def test_a_partly_float_int8_artifact_records_which_optimizers_it_was_measured_faster_without(exported, tmp_path):
    """A layer kept in float beside INT8 ones: the backend times the graph with and without ORT's
    QDQ propagation side by side and records the choice; every session on the artifact applies it."""
    from hadmc_deploy.backends.ort_optimizer_choice import (
        MIN_GAIN,
        QDQ_PROPAGATION,
        has_float_and_int8_layers,
    )

    model, src, _ = exported
    first_conv = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv")
    all_int8, _ = _int8_artifact(src, tmp_path / "all")
    assert not has_float_and_int8_layers(onnx.load(str(all_int8.model_path)))
    assert all_int8.metadata["session_options"]["disabled_optimizers"] == []
    assert all_int8.metadata["session_options"]["disabled_optimizers_measured"] is None  # nothing to choose: not timed

    art, x = _int8_artifact(src, tmp_path / "mixed", [first_conv])
    assert has_float_and_int8_layers(onnx.load(str(art.model_path)))
    so = art.metadata["session_options"]
    measured = so["disabled_optimizers_measured"]
    disabled = measured["without_qdq_propagation_ms"] < measured["default_ms"] * (1 - MIN_GAIN)
    assert so["disabled_optimizers"] == ([QDQ_PROPAGATION] if disabled else [])
    assert measured["chosen"] == ("without_qdq_propagation" if disabled else "default")

    # force the choice, then every way of opening the artifact must honour it and still compute the model
    meta = json.loads((art.path / "metadata.json").read_text())
    meta["session_options"]["disabled_optimizers"] = [QDQ_PROPAGATION]
    (art.path / "metadata.json").write_text(json.dumps(meta))
    forced = Artifact.load(art.path)
    backend = get("onnxruntime")
    out = backend.run(forced, {"input": x[:1]})["output"]
    assert any(key[-1] == (QDQ_PROPAGATION,) for key in backend._sessions)
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:1])).numpy()
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    res = subprocess.run([sys.executable, str(art.path / "example.py")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_the_optimizer_choice_takes_fewer_runs_of_a_slow_model(exported, tmp_path, monkeypatch):
    """A detector-sized model gets 3 rounds of 3 runs (a few seconds), not 5 of 10: stood in for by
    a time cap so small that any model is slow against it."""
    from hadmc_deploy.backends import ort_optimizer_choice as choice

    _, src, _ = exported
    first_conv = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv")
    monkeypatch.setattr(choice, "TIME_PER_ROUND_MS", 1e-6)
    art, _ = _int8_artifact(src, tmp_path / "slow", [first_conv])
    measured = art.metadata["session_options"]["disabled_optimizers_measured"]
    assert (measured["rounds"], measured["runs"]) == (3, 3)


def test_release_sessions_drops_the_kept_sessions(artifact):
    """A benchmark keeps its session for the next call; release_sessions drops it (whole-model
    timings of several artifacts keep one session alive at a time)."""
    backend = get("onnxruntime")
    backend.benchmark(artifact, batch=1, warmup=0, runs=1)
    assert len(backend._sessions) == 1
    backend.release_sessions()
    assert backend._sessions == {}
    assert backend.benchmark(artifact, batch=1, warmup=0, runs=1).p50_ms > 0  # and a new one is made when needed


def _count_alive_at_each_benchmark(monkeypatch, module) -> tuple[list[int], list]:
    """Patch `module.get` so that every ONNX Runtime backend it hands out is recorded, and every
    timed benchmark records how many sessions all of them hold at that moment."""
    counts: list[int] = []
    made: list = []
    real_get = module.get

    def counting_get(name):
        backend = real_get(name)
        made.append(backend)
        real = backend._benchmark

        def timed(art, batch, warmup, runs):
            counts.append(sum(len(b._sessions) for b in made))
            return real(art, batch, warmup, runs)

        backend._benchmark = timed
        return backend

    monkeypatch.setattr(module, "get", counting_get)
    return counts, made


def test_the_decide_stage_times_one_session_at_a_time(monkeypatch, artifact, exported, tmp_path):
    """The decision's interleaved rounds (build/side_by_side.py, also the evaluate stage's check
    of an INT8 slowdown) keep no idle session beside the one being timed (an idle session's
    spinning workers slowed the next model: tools/bench_sessions_alive.py)."""
    import types as _types

    from hadmc_deploy.build import decision_timing, side_by_side
    from hadmc_deploy.ui import quiet_ui

    _, path, _ = exported
    other = get("onnxruntime").build(request(path, "fp32", tmp_path / "tiny-fp32-b", ort=OrtBuildOptions(threads=1)))
    assert decision_timing.interleaved_rounds is side_by_side.interleaved_rounds
    counts, _ = _count_alive_at_each_benchmark(monkeypatch, side_by_side)
    ctx = _types.SimpleNamespace(path=lambda p: p, ui=quiet_ui())
    rows = [{"name": "a", "backend": "onnxruntime", "artifact": artifact.path}, {"name": "b", "backend": "onnxruntime", "artifact": other.path}]
    fastest, _ = side_by_side.time_interleaved(ctx, rows, batch=1)
    assert set(fastest) == {"a", "b"} and all(v > 0 for v in fastest.values())
    assert len(counts) >= 2 * side_by_side.ROUNDS
    assert max(counts) <= 1, counts


def test_whole_model_timing_keeps_one_session_alive(exported, tmp_path):
    """time_onnx_interleaved (the build's latency check) releases each model's session after its
    round: the session count seen by every timed benchmark is at most one."""
    from hadmc_deploy.latency.whole_model import time_onnx_interleaved

    _, path, _ = exported
    backend = get("onnxruntime")
    counts: list[int] = []
    real = backend._benchmark

    def timed(art, batch, warmup, runs):
        counts.append(len(backend._sessions))
        return real(art, batch, warmup, runs)

    backend._benchmark = timed
    out = time_onnx_interleaved([path, path], backend, batch=1, rounds=2, warmup=1, runs=2)
    assert len(out) == 2 and counts and max(counts) <= 1, counts


def test_an_int8_slowdown_seen_once_is_timed_again_side_by_side_before_the_report_advises_fp32(artifact, exported, tmp_path):
    """One short pass put INT8 behind FP32 at batch 1: the evaluate stage times both again in
    interleaved rounds and records what those measured; the report's note is given only for a
    slowdown beyond the measured noise. (Two FP32 builds of one graph stand in for the pair: the
    check compares whatever artifacts the rows name.)"""
    import types as _types

    from hadmc_deploy.build.side_by_side import ROUNDS
    from hadmc_deploy.build.stages.evaluate import confirm_int8_slowdowns
    from hadmc_deploy.report import _notes
    from hadmc_deploy.ui import quiet_ui

    _, path, _ = exported
    other = get("onnxruntime").build(request(path, "fp32", tmp_path / "tiny-fp32-c", ort=OrtBuildOptions(threads=1)))
    ctx = _types.SimpleNamespace(path=lambda p: p, ui=quiet_ui())
    rows = [{"name": "baseline-fp32", "backend": "onnxruntime", "artifact": artifact.path, "latency": {"1": {"p50_ms": 0.05}, "8": {"p50_ms": 0.2}}},
            {"name": "baseline-int8", "backend": "onnxruntime", "artifact": other.path, "latency": {"1": {"p50_ms": 0.09}, "8": {"p50_ms": 0.1}}}]
    checks = confirm_int8_slowdowns(ctx, rows)
    assert [c["batch"] for c in checks] == [1]  # batch 8: INT8 was faster in the single pass, nothing to confirm
    check = checks[0]
    assert check["model"] == "baseline" and check["rounds"] == ROUNDS and check["single_pass"] == {"fp32_ms": 0.05, "int8_ms": 0.09}
    assert check["fp32_ms"] > 0 and check["int8_ms"] > 0 and 0 <= check["noise"] <= 0.10
    assert check["slower"] == (check["int8_ms"] > check["fp32_ms"] * (1 + check["noise"]))
    assert confirm_int8_slowdowns(ctx, [rows[0], {**rows[1], "artifact": None}]) == []  # nothing built here: nothing timed
    assert confirm_int8_slowdowns(ctx, rows, skip_batch=1) == []  # the primary batch: the decide stage's timings judge it
    confirmed = {**check, "slower": True}
    assert _notes([check | {"slower": False}]) == []
    (note,) = _notes([confirmed])
    assert note.startswith("baseline: INT8 measured slower than FP32 at batch 1 side by side") and "deploy baseline-fp32" in note


def test_the_primary_batchs_int8_check_comes_from_the_decisions_side_by_side_timings():
    """At the primary batch the decide stage has timed every candidate side by side: the report's
    INT8-vs-FP32 check there reads those timings (slower only beyond the decision's noise)."""
    from hadmc_deploy.report import _notes, decision_int8_checks

    decision = {"primary_batch": 32, "noise": 0.05, "candidates": [
        {"name": "baseline-fp32", "p50_ms": 1.0}, {"name": "baseline-int8", "p50_ms": 1.2},
        {"name": "pruned-fp32", "p50_ms": 0.8}, {"name": "pruned-int8", "p50_ms": 0.82}, {"name": "pruned-mixed", "p50_ms": 0.7}]}
    checks = decision_int8_checks(decision)
    assert [(c["model"], c["batch"], c["slower"]) for c in checks] == [("baseline", 32, True), ("pruned", 32, False)]
    (note,) = _notes(checks)
    assert note.startswith("baseline: INT8 measured slower than FP32 at batch 32 side by side (1.200 vs 1.000 ms")
    assert decision_int8_checks({}) == []  # no decision (nothing built here): no check
