"""TensorRT per-layer profiling: layer names -> ONNX nodes (pure), and the profiler plumbing on a FAKE tensorrt.

The `test_map_*` tests need no TensorRT: they map layer names written the way TensorRT
names fused layers (conv+relu, conv+add+relu, reformat copy nodes, INT8 layers with their
Q/DQ nodes, Myelin foreign nodes) onto small real ONNX graphs exported with torch. The
names are hand-written from TensorRT's naming scheme, not read from an engine.
The `test_fake_module_*` tests run `profile_engine` against `tensorrt_fake_module`, whose
profiler reports whatever times the test hands it: they check our warm-up, run grouping,
median and buffer plumbing, never that a real engine profiles (tools/check_tensorrt.py's
job on a GPU host).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from tensorrt_fake_module import fake_installer, make_fake_trt
from tensorrt_models import tiny_cnn
from torch import nn

import hadmc_deploy.backends.tensorrt as trt_backend
import hadmc_deploy.backends.tensorrt_runtime as trt_runtime
from hadmc_deploy.backends.request import BuildRequest, TrtBuildOptions
from hadmc_deploy.backends.tensorrt_build import EngineBuildSpec, build_engine
from hadmc_deploy.backends.tensorrt_features import detect_features, plan_precision
from hadmc_deploy.backends.tensorrt_profile import (
    attribute_layers,
    make_profiler,
    median_layer_ms,
    onnx_node_times,
    parsed_onnx,
    profile_engine,
)
from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.latency.ort_profile import source_weighted_nodes
from hadmc_deploy.targets import T4

WEIGHTED = ["/conv1/Conv", "/conv2/Conv", "/down/Conv", "/fc/Gemm"]


class _Block(nn.Module):
    """conv1+relu, then conv2 and a 1x1 shortcut conv added, relu, pool, fc: a residual stage in small."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.down, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        z = self.relu2(self.conv2(y) + self.down(y))
        return self.fc(torch.flatten(self.pool(z), 1))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(float ONNX, QDQ ONNX in the TensorRT placement the INT8 stage writes), exported once."""
    from hadmc_deploy.calibration.collect import float_tensor_names
    from hadmc_deploy.calibration.qdq import write_qdq
    from hadmc_deploy.calibration.ranges import ActivationRanges, TensorRange

    tmp = tmp_path_factory.mktemp("profile")
    torch.manual_seed(0)
    torch.onnx.export(_Block().eval(), torch.zeros(1, 3, 8, 8), str(tmp / "m.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"])
    model = onnx.load(str(tmp / "m.onnx"))
    ranges = ActivationRanges({t: TensorRange(2.0, -2.0, 2.0) for t in float_tensor_names(model)}, "minmax", 1, "m", "d")
    qdq = onnx.load(str(write_qdq(tmp / "m.onnx", ranges, tmp / "q.onnx")))
    assert [n for n, _ in source_weighted_nodes(model)] == WEIGHTED  # the export names the tests rely on
    return model, qdq


def _approx(d: dict[str, float]) -> dict[str, float]:
    return {k: pytest.approx(v) for k, v in d.items()}


# -- the mapping (no TensorRT) ------------------------------------------------------------
def test_map_float_engine_fusions_reformats_and_glue(graphs):
    """Fused conv+relu and conv+add+relu go to their conv; a reformat to the layer it feeds; the
    pool to the Gemm it feeds; TensorRT's own unnamed layers and Myelin kernels are unattributed."""
    model, _ = graphs
    layers = {
        "Reformatting CopyNode for Input Tensor 0 to /conv1/Conv + /relu/Relu": 0.01,
        "/conv1/Conv + /relu/Relu": 0.05,
        "/down/Conv": 0.02,
        "/conv2/Conv + /Add + /relu2/Relu": 0.04,
        "/pool/GlobalAveragePool": 0.006,
        "reshape_before_/fc/Gemm": 0.001,
        "/fc/Gemm": 0.003,
        "(Unnamed Layer* 12) [Shuffle]": 0.002,
        "__myl_MulSum_myl0_1": 0.004,
    }
    got = attribute_layers(layers, model)
    assert got.node_ms == _approx({"/conv1/Conv": 0.06, "/conv2/Conv": 0.04, "/down/Conv": 0.02, "/fc/Gemm": 0.01})
    assert list(got.node_ms) == WEIGHTED  # graph order
    assert got.unattributed_layers == ["(Unnamed Layer* 12) [Shuffle]", "__myl_MulSum_myl0_1"]
    assert got.unattributed_ms == pytest.approx(0.006)
    assert got.total_ms == pytest.approx(sum(layers.values()))  # nothing lost, nothing counted twice
    assert got.split_layers == {} and got.missing_nodes == []
    assert onnx_node_times(layers, model) == got.node_ms


def test_map_int8_layers_with_their_qdq_nodes(graphs):
    """INT8 names (TensorRT 8.x style: weight + quantize scale node + conv; `_clone_N` copies) go to the
    conv they name; standalone Q/DQ layers go to the conv they feed, a residual Q to the conv it quantizes."""
    _, qdq = graphs
    layers = {
        "input_QuantizeLinear": 0.003,
        "conv1.weight + /relu/Relu_output_0_QuantizeLinear_quantize_scale_node + /conv1/Conv + /relu/Relu": 0.05,
        "down.weight + /relu/Relu_output_0_QuantizeLinear_clone_1 + /down/Conv": 0.02,
        "/down/Conv_output_0_residual_QuantizeLinear": 0.004,
        "conv2.weight + /down/Conv_output_0_residual_DequantizeLinear + /conv2/Conv + /Add + /relu2/Relu": 0.04,
        "/relu/Relu_output_0_DequantizeLinear": 0.002,
        "/pool/GlobalAveragePool": 0.006,
        "fc.weight_DequantizeLinear_dequantize_scale_node + /fc/Gemm": 0.003,
    }
    got = attribute_layers(layers, qdq)
    # the standalone DQ feeds conv2 and the shortcut conv alike: split, and reported as split
    assert got.node_ms == _approx({"/conv1/Conv": 0.053, "/conv2/Conv": 0.041, "/down/Conv": 0.025, "/fc/Gemm": 0.009})
    assert got.split_layers == {"/relu/Relu_output_0_DequantizeLinear": ["/conv2/Conv", "/down/Conv"]}
    assert got.unattributed_ms == 0.0 and got.missing_nodes == []


def test_map_glue_lands_alike_in_float_and_qdq_graphs(graphs):
    """Q/DQ nodes cost no distance: the pool goes to the Gemm in both graphs (in the QDQ graph the
    Gemm is four hops away, the conv before the add three)."""
    model, qdq = graphs
    layers = {"/pool/GlobalAveragePool": 1.0, "/Flatten": 0.5}
    assert onnx_node_times(layers, model) == onnx_node_times(layers, qdq) == {"/fc/Gemm": 1.5}


def test_map_myelin_foreign_nodes_split_over_their_range(graphs):
    """A ForeignNode[first...last] covers every node from first to last in graph order: its time is split
    over the weighted ones, equally or by the caller's share; one holding a single conv is not split."""
    model, _ = graphs
    whole = {"{ForeignNode[/conv1/Conv.../fc/Gemm]}": 0.4}
    got = attribute_layers(whole, model)
    assert got.node_ms == _approx(dict.fromkeys(WEIGHTED, 0.1))
    assert got.split_layers == {"{ForeignNode[/conv1/Conv.../fc/Gemm]}": WEIGHTED}
    shared = attribute_layers(whole, model, share={"/conv1/Conv": 1, "/conv2/Conv": 2, "/down/Conv": 1, "/fc/Gemm": 4})
    assert shared.node_ms == _approx({"/conv1/Conv": 0.05, "/conv2/Conv": 0.1, "/down/Conv": 0.05, "/fc/Gemm": 0.2})
    tail = attribute_layers({"{ForeignNode[/pool/GlobalAveragePool.../fc/Gemm]}": 0.3,
                             "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[/conv1/Conv.../relu/Relu]}": 0.1}, model)
    assert tail.node_ms == _approx({"/conv1/Conv": 0.1, "/fc/Gemm": 0.3}) and tail.split_layers == {}
    assert tail.missing_nodes == ["/conv2/Conv", "/down/Conv"]


@pytest.mark.parametrize("names", [
    ["0", "1", "2", "3"],  # an engine built with ProfilingVerbosity.NONE: layers are indices
    ["", "+ + (", "{ForeignNode[]}", "{ForeignNode[/nope.../nada]}", "PWN()", "Reformatting CopyNode for Input Tensor 0 to ?"],
])
def test_map_unknown_names_are_unattributed_never_an_error(graphs, names):
    model, _ = graphs
    got = attribute_layers(dict.fromkeys(names, 0.5), model)
    assert got.node_ms == {} and got.unattributed_layers == names
    assert got.unattributed_ms == pytest.approx(0.5 * len(names)) and got.missing_nodes == WEIGHTED


def test_map_unnamed_onnx_nodes_by_tensorrt_alias(tmp_path):
    """An unnamed ONNX node is `node_of_<first output>` to TensorRT and `<Op>_<k>` to ort_profile."""
    model = onnx.load(str(tiny_cnn(tmp_path / "m.onnx")))
    for node in model.graph.node:
        node.name = ""
    got = attribute_layers({"node_of_conv_out + node_of_relu_out": 0.2, "node_of_pool_out": 0.1}, model)
    assert [n for n, _ in source_weighted_nodes(model)] == ["Conv_0"]
    assert got.node_ms == _approx({"Conv_0": 0.3}) and got.unattributed_ms == 0.0


def test_map_numeric_layer_names_are_indices_not_tensors(tmp_path):
    """Verbosity NONE names layers by index: "1" is not the tensor a legacy export happened to call "1"."""
    model = onnx.load(str(tiny_cnn(tmp_path / "m.onnx")))
    relu, pool = model.graph.node[1], model.graph.node[2]
    relu.output[0] = pool.input[0] = "1"
    got = attribute_layers({"1": 0.1, "/relu/Relu": 0.2}, model)
    assert got.unattributed_layers == ["1"] and got.node_ms == _approx({"/conv/Conv": 0.2})


# -- the profiler and profile_engine on the FAKE module -------------------------------------
@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake tensorrt module, a fake T4 description and CPU buffers; returns the installer."""
    return fake_installer(monkeypatch, cpu_buffers=True)


CONV, POOL = "/conv/Conv + /relu/Relu", "/pool/GlobalAveragePool"
#: per execution: a slow first (warm-up) run, then conv 1, 3, 2 ms (median 2) and the pool reported twice in the third.
TIMES = [[(CONV, 100.0), (POOL, 100.0)], [(CONV, 1.0), (POOL, 0.1)], [(CONV, 3.0), (POOL, 0.3)], [(CONV, 2.0), (POOL, 0.1), (POOL, 0.1)]]


def _artifact(tmp_path, **opts):
    onnx_path = tiny_cnn(tmp_path / "model.onnx")
    request = BuildRequest(onnx_path, "fp32", tmp_path / "engine", T4, trt=TrtBuildOptions(use_timing_cache=False, **opts))
    return trt_backend.TensorRTBackend()._build(request)


def _calls(trt, name):
    return [c for c in trt.calls if c[0] == name]


def test_fake_module_profiler_keeps_one_dict_per_run():
    """Fake-module test: the profiler subclasses trt.IProfiler, sums a name reported twice in one run."""
    trt = make_fake_trt("10.3.0")
    profiler = make_profiler(trt)
    assert isinstance(profiler, trt.IProfiler)
    for ms in (1.0, 5.0, 2.0):
        profiler.report_layer_time("a", ms)
        profiler.report_layer_time("a", ms)
        profiler.report_layer_time("b", 0.5)
        profiler.end_run()
    assert profiler.runs[1] == {"a": 10.0, "b": 0.5}
    assert median_layer_ms(profiler.runs) == {"a": 4.0, "b": 0.5}
    profiler.reset()
    assert profiler.runs == [] and profiler.current == {}


def test_fake_module_profile_engine_drops_warmup_and_takes_medians(tmp_path, use_fake):
    """Fake-module test: warm-up reports dropped, one report_to_profiler per execution (deferred
    reporting), median per layer, inputs bound at the asked batch."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True, layer_times=TIMES))
    artifact = _artifact(tmp_path)
    got = profile_engine(artifact.path, batch=4, runs=3, warmup=1)
    assert got == {CONV: 2.0, POOL: pytest.approx(0.2)}
    assert len(_calls(trt, "execute_async_v3")) == 4 and len(_calls(trt, "report_to_profiler")) == 4
    # the node table of the graph TensorRT parsed, through the documented API
    assert parsed_onnx(artifact.path) == tmp_path / "model.onnx"
    assert onnx_node_times(got, parsed_onnx(artifact.path)) == {"/conv/Conv": pytest.approx(2.2)}


def test_fake_module_profile_engine_without_deferred_reporting(tmp_path, use_fake, monkeypatch):
    """Fake-module test: a TensorRT without report_to_profiler reports from enqueue; same result."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True, layer_times=TIMES))
    artifact = _artifact(tmp_path)
    monkeypatch.delattr(trt.IExecutionContext, "report_to_profiler")
    assert profile_engine(artifact.path, batch=2, runs=3, warmup=1) == {CONV: 2.0, POOL: pytest.approx(0.2)}
    assert _calls(trt, "report_to_profiler") == []


def test_fake_module_profile_engine_bare_engine_file(tmp_path, use_fake):
    """Fake-module test: an engine file without metadata is bound at its own dims, batch axis set."""
    trt = use_fake(make_fake_trt("10.3.0", runnable=True, layer_times=TIMES[1:]))
    engine = tmp_path / "loose.engine"
    engine.write_bytes(b"engine")
    assert profile_engine(engine, batch=3, runs=3, warmup=0)[CONV] == 2.0
    assert tuple(_calls(trt, "execute_async_v3")) and trt_runtime.RUNTIME_DEVICE == "cpu"
    with pytest.raises(UsageError, match="does not exist"):
        profile_engine(tmp_path / "absent.engine")


def test_fake_module_profile_engine_refusals(tmp_path, use_fake):
    """Fake-module test: a batch outside the profile and an engine that reports nothing are errors."""
    use_fake(make_fake_trt("10.3.0", runnable=True))  # no layer times: a profiler that is never called
    artifact = _artifact(tmp_path)
    with pytest.raises(UsageError, match="outside the engine's profile"):
        profile_engine(artifact.path, batch=1000)
    with pytest.raises(ArtifactError, match="no layer times"):
        profile_engine(artifact.path, batch=1, runs=2, warmup=0)


def test_fake_module_build_profiling_verbosity_option(tmp_path, use_fake):
    """Fake-module test: DETAILED by default; the typed option reaches the builder config and the metadata."""
    trt = make_fake_trt("10.3.0")
    plan = plan_precision(detect_features(trt), "fp32")
    shapes = {"input": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [1, 1, 8, 8]}}
    build_engine(trt, EngineBuildSpec(tiny_cnn(tmp_path / "m.onnx"), plan, shapes))
    build_engine(trt, EngineBuildSpec(tmp_path / "m.onnx", plan, shapes, profiling_verbosity="layer_names_only"))
    assert _calls(trt, "profiling_verbosity") == [("profiling_verbosity", "DETAILED"), ("profiling_verbosity", "LAYER_NAMES_ONLY")]
    trt = use_fake(make_fake_trt("11.4.0"))
    (tmp_path / "b").mkdir()
    artifact = _artifact(tmp_path / "b", profiling_verbosity="none")
    assert _calls(trt, "profiling_verbosity") == [("profiling_verbosity", "NONE")]
    assert artifact.metadata["profiling_verbosity"] == "none"
    with pytest.raises(UsageError, match="profiling verbosity"):
        BuildRequest(tmp_path / "m.onnx", "fp32", tmp_path / "x", T4, trt=TrtBuildOptions(profiling_verbosity="verbose")).validate()


def test_fake_module_check_tool_profile_step(tmp_path, use_fake, monkeypatch):
    """Fake-module test of tools/check_tensorrt_profile.py: the per-layer sum is held against the measured
    p50 and the attributed share; both failures are named, and the markdown shows every engine's nodes."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    import check_tensorrt_profile as tool

    use_fake(make_fake_trt("10.3.0", runnable=True, layer_times=TIMES))
    artifact = _artifact(tmp_path)
    ok = tool.profile_variant(artifact, batch=4, measured_p50_ms=2.0, runs=3, warmup=1)
    assert ok["layer_sum_ms"] == pytest.approx(2.2) and ok["ratio"] == pytest.approx(1.1) and ok["problem"] is None
    assert ok["node_ms"] == {"/conv/Conv": pytest.approx(2.2)} and ok["attributed_share"] == pytest.approx(1.0)
    slow = tool.profile_variant(artifact, batch=4, measured_p50_ms=20.0, runs=3, warmup=1)
    assert "0.11x the measured p50 20.000 ms" in slow["problem"]
    lost = {**ok, "attributed_share": 0.2, "unattributed_layers": ["0", "1"]}
    assert tool.profile_problem(lost).startswith("only 20% of the layer time maps")
    text = "\n".join(tool.profile_markdown("demo", [{"variant": "fp16", "profile": ok}, {"variant": "int8-qdq", "profile_error": "X"},
                                                   {"variant": "fp32", "error": "E"}]))
    assert "| fp16 | 4 | 2.200 | 2.000 | 1.10x | 0.000 | 2 | ok |" in text and "| int8-qdq | | | | | | | X |" in text
    assert "| /conv/Conv | 2.2000 |" in text
    assert tool.profile_markdown("demo", [{"variant": "fp32", "error": "E"}]) == []
