"""ONNX Runtime profiling of real sessions: kernels mapped to layers, INT8 vs FP32 per layer, measured tables."""

from __future__ import annotations

import onnx  # noqa: E402  (after torch, as elsewhere in the tests)
import pytest
import torch

from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.auto import MeasureOptions
from hadmc_deploy.latency.kernel_pairing import match_by_key, pair_kernels
from hadmc_deploy.latency.ort_profile import (
    KernelTime,
    SessionProfile,
    int8_slow_layers,
    layer_times,
    parse_profile,
    profile_session,
    source_weighted_nodes,
)
from hadmc_deploy.latency.stated_spread import STEADY_SPREAD, measurement_spread
from hadmc_deploy.latency.table_cache import measured_latency_model
from hadmc_deploy.latency.whole_model import _timing_ranges, export_for_timing
from hadmc_deploy.models.demo import demo_cnn
from hadmc_deploy.targets import get_target


def test_glue_is_split_between_neighbouring_weighted_kernels():
    prof = SessionProfile([
        KernelTime("q", "QuantizeLinear", 0.1), KernelTime("c1", "QLinearConv", 1.0, ("conv",)),
        KernelTime("r", "ReorderOutput", 0.4), KernelTime("c2", "Conv", 2.0, ("conv", 1, 1)), KernelTime("dq", "DequantizeLinear", 0.3),
    ], run_ms=4.0, runs=1)
    assert prof.weighted_times() == pytest.approx([1.0 + 0.1 + 0.2, 2.0 + 0.2 + 0.3])
    assert sum(prof.weighted_times()) == pytest.approx(prof.kernel_sum_ms)


def test_matching_follows_keys_not_order():
    layers = [("conv1", ("conv", 3, 3)), ("conv2", ("conv", 3, 3)), ("down", ("conv", 1, 1)), ("fc", ("linear",))]
    kernels = [("k_down", ("conv", 1, 1)), ("k1", ("conv", 3, 3)), ("k2", ("conv",)), ("k_fc", ("linear",))]
    pairs = match_by_key(layers, kernels)
    assert [(layers[i][0], kernels[j][0]) for i, j in pairs] == [("conv1", "k1"), ("conv2", "k2"), ("down", "k_down"), ("fc", "k_fc")]
    assert match_by_key(layers, kernels[:3]) is None


def test_quantized_kernels_pair_by_the_names_they_keep_not_by_order():
    """ORT runs a block's 1x1 shortcut after its 3x3 path and quantized kernels report no size:
    in order, the shortcut would take the 3x3 conv's time (and every layer after it a neighbour's)."""
    nodes = [("conv1", ("conv", 3, 3)), ("down", ("conv", 1, 1)), ("conv2", ("conv", 3, 3)), ("conv3", ("conv", 3, 3)), ("fc", ("linear",))]
    names = ["conv1_token_1", "conv2_token_4", "conv3_token_7", "down_token_9", "fc"]
    kernels = [(1.0, ("conv",)), (2.0, ("conv",)), (3.0, ("conv",)), (0.5, ("conv",)), (0.1, ("linear",))]
    pairs = pair_kernels(nodes, names, kernels)
    assert {nodes[i][0]: kernels[j][0] for i, j in pairs} == {"conv1": 1.0, "conv2": 2.0, "conv3": 3.0, "down": 0.5, "fc": 0.1}
    # a name that only extends another's ("conv1" is a prefix of "conv10") is not taken for it
    nodes10 = [("conv1", ("conv", 3, 3)), ("conv10", ("conv", 3, 3))]
    pairs = pair_kernels(nodes10, ["conv10_token_2", "conv1_token_1"], [(7.0, ("conv",)), (5.0, ("conv",))])
    assert {nodes10[i][0]: j for i, j in pairs} == {"conv1": 1, "conv10": 0}
    # kernels named after nothing fall back to keys in order
    pairs = pair_kernels(nodes, ["a", "b", "c", "d", "e"], kernels)
    assert [nodes[i][0] for i, _ in pairs] == ["conv1", "down", "conv2", "conv3", "fc"]
    assert pair_kernels(nodes, names[:4], kernels[:4]) is None


def test_parse_profile_takes_the_median_after_warmup():
    events = [{"cat": "Node", "name": "c_kernel_time", "dur": d, "args": {"op_name": "Conv", "input_type_shape": [{"float": [1, 3, 8, 8]}, {"float": [4, 3, 3, 3]}]}} for d in (900, 100, 200, 300)]
    events += [{"cat": "Session", "name": "model_run", "dur": d} for d in (1000, 400, 500, 600)]
    prof = parse_profile(events, warmup=1)
    assert prof.kernels[0].ms == pytest.approx(0.2) and prof.kernels[0].key == ("conv", 3, 3) and prof.run_ms == pytest.approx(0.5)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prof")
    torch.manual_seed(0)
    shape = (2, 1, 28, 28)
    f = export_for_timing(demo_cnn().eval(), shape, tmp / "f.onnx", exporter="fast")
    q = write_qdq(f, _timing_ranges(f, shape), tmp / "q.onnx", form="qdq_s8s8", placement="onnxruntime")
    return f, q


def test_profiled_session_maps_every_weighted_node(demo_onnx):
    f, q = demo_onnx
    src = onnx.load(str(f))
    names = [n for n, _ in source_weighted_nodes(src)]
    for path in (f, q):
        times = layer_times(profile_session(path, batch=2, runs=3), src)
        assert sorted(times) == sorted(names) and all(t > 0 for t in times.values())


@pytest.mark.parametrize("exporter", ["deploy", "fast"])
def test_a_real_int8_profile_pairs_each_layer_with_its_own_kernel(tmp_path, exporter):
    """The demo CNN's residual blocks have 1x1 shortcuts that ORT runs after the 3x3 path; every
    quantized kernel keeps its source node's name, and each node gets the kernel named after it."""
    torch.manual_seed(0)
    shape = (2, 1, 28, 28)
    f = export_for_timing(demo_cnn().eval(), shape, tmp_path / "f.onnx", exporter=exporter)
    q = write_qdq(f, _timing_ranges(f, shape), tmp_path / "q.onnx", form="qdq_u8s8", placement="onnxruntime")
    src = onnx.load(str(f))
    names = [n for n, _ in source_weighted_nodes(src)]
    prof = profile_session(q, batch=2, runs=3)
    weighted = [k for k in prof.kernels if k.weighted]
    assert {k.op for k in weighted} >= {"QLinearConv"}
    order = [names.index(next(n for n in sorted(names, key=len, reverse=True) if k.name.startswith(n))) for k in weighted]
    assert order != sorted(order)  # ORT's order is not the source's here: the case names must settle
    times = dict(zip([k.name for k in weighted], prof.weighted_times(), strict=True))
    paired = layer_times(prof, src)
    for node in names:
        own = next(k for k in times if k == node or k.startswith(node + "_token_"))
        assert paired[node] == pytest.approx(times[own])


class _Branches(torch.nn.Module):
    """An Inception-like block: ORT runs its branches in another order than the source lists them."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = conv(3, 32, 3, padding=1)
        self.b1, self.b2a, self.b2b = conv(32, 16, 1), conv(32, 64, 1), conv(64, 256, 3, padding=1)
        self.b3a, self.b3b, self.b4 = conv(32, 4, 1), conv(4, 8, 3, padding=1), conv(32, 16, 1)
        self.head, self.fc = conv(296, 32, 1), torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.cat([torch.relu(self.b1(x)), torch.relu(self.b2b(torch.relu(self.b2a(x)))),
                       torch.relu(self.b3b(torch.relu(self.b3a(x)))), torch.relu(self.b4(x))], 1)
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


@pytest.mark.parametrize("exporter", ["deploy", "fast"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_branches_run_out_of_source_order_keep_their_own_times(tmp_path, exporter, precision):
    """The 64 -> 256 3x3 conv of one branch does 512x the work of the 4 -> 8 3x3 conv of another;
    paired by keys in execution order, the small one took the big one's time (FP32: NCHWc kernels are
    named after the tensor they write, traced back to their conv; INT8: after the node)."""
    torch.manual_seed(0)
    shape = (1, 3, 32, 32)
    f = export_for_timing(_Branches().eval(), shape, tmp_path / "f.onnx", exporter=exporter)
    path = f if precision == "fp32" else write_qdq(f, _timing_ranges(f, shape), tmp_path / "q.onnx", form="qdq_u8s8", placement="onnxruntime")
    src = onnx.load(str(f))
    conv_of = {tuple(i.dims): i.name for i in src.graph.initializer if len(i.dims) == 4}
    node_of = {n.input[1]: n.name for n in src.graph.node if n.op_type == "Conv"}
    big, small = node_of[conv_of[(256, 64, 3, 3)]], node_of[conv_of[(8, 4, 3, 3)]]
    times = layer_times(profile_session(path, batch=1, runs=5), src)
    assert times[big] > 3 * times[small]  # swapped, the small one got ~20x the big one's time


def test_int8_slow_layers_times_both_graphs(demo_onnx):
    f, q = demo_onnx
    slow, timings = int8_slow_layers(f, q, 2, rounds=1, runs=3)
    names = {n for n, _ in source_weighted_nodes(onnx.load(str(f)))}
    assert {t.node for t in timings} == names and set(slow) <= names
    assert all(t.fp32_ms > 0 and t.int8_ms > 0 for t in timings)
    assert all(t.slower_in_int8 for t in timings if t.node in slow)


def test_measured_model_is_cached_per_graph_and_machine(tmp_path):
    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    opts = MeasureOptions(grid_points=2, passes=2, runs_per_pass=2, context_rounds=1, exporter="fast", anchor=True, anchor_store=tmp_path / "anchor.json")
    lm, info = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, budget_s=120, options=opts)
    assert not info["cached"] and info["complete"] and lm.table.staircase is not None
    # the speed anchor calibrated around the table: the machine's reference and its slowdown recorded
    anchor = lm.table.meta.method["anchor"]
    assert anchor["reference_ms"] > 0 and anchor["slowdown"] > 0 and (tmp_path / "anchor.json").exists()
    assert lm.table.context is not None and len(lm.table.context.factors) == len(graph.layers)  # profiled in context
    ctx = lm.table.context
    if ctx.step != lm.table.staircase.step and ctx.step_pays():  # the probe found no step or another one; the deployed chain's pays
        assert lm.table.alignment() == ctx.step > 1 and ctx.unaligned_penalty > 1.10
    else:
        assert lm.table.alignment() == lm.table.staircase.step >= 1
    assert {e.role for e in lm.table.entries.values()} >= {"grid", "sweep"}
    assert all(e.spread is not None for e in lm.table.entries.values())
    pred = lm.predict(graph.layer_specs())
    assert pred.total_ms > 0 and pred.source == "lut"
    # what a build without a budget reuses for its predictions: this table, and none for another batch
    from pathlib import Path

    from hadmc_deploy.latency.table_cache import cached_table

    assert cached_table(graph, get_target("cpu"), "fp32", 1, tmp_path) == Path(info["lut"])
    assert cached_table(graph, get_target("cpu"), "fp32", 2, tmp_path) is None
    lm2, info2 = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, options=opts)
    if measurement_spread(lm.table) > STEADY_SPREAD:  # measured while the machine was busy (the tests beside it): measured once more
        assert not info2["cached"] and info2["measured_again"]["earlier_spread"] == pytest.approx(measurement_spread(lm.table))
    else:
        assert info2["cached"] and lm2.predict(graph.layer_specs()).total_ms == pytest.approx(pred.total_ms)
    other = trace(demo_cnn(num_classes=5).eval(), shape)  # another graph: another cache entry
    from hadmc_deploy.latency.auto import graph_signature

    assert graph_signature(other) != graph_signature(graph)


def test_cpu_clock_context_fit_takes_more_rounds_within_its_time(tmp_path):
    """On the CPU clock the context fit goes on past its rounds while they took less than
    `cpu_context_seconds` (the minimum over more rounds is a floor that repeats); on the wall
    clock it stops at its rounds."""
    from hadmc_deploy.latency.auto import measure_table
    from hadmc_deploy.latency.context_measure import MAX_CONTEXT_ROUNDS

    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    rounds = {}
    for clock, seconds in (("cpu", 60.0), ("wall", 60.0)):
        opts = MeasureOptions(grid_points=2, passes=1, runs_per_pass=2, context_rounds=2, exporter="fast", clock=clock, cpu_context_seconds=seconds)
        table, _ = measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, tmp_path / f"{clock}.json", options=opts)
        rounds[clock] = {row["rounds"] for row in table.context.fitted_on}
    assert rounds == {"cpu": {MAX_CONTEXT_ROUNDS}, "wall": {2}}


def test_no_step_in_isolation_puts_the_grid_on_the_cpus_blocked_width(tmp_path):
    """Where the staircase probe finds no step, the grid (and the off-grid points) sit on the
    CPU's blocked width, the step the context then profiles: two tables whose probes answered
    "none" and that width price from the same grid."""
    from hadmc_deploy.latency.alignment import blocked_layout_width
    from hadmc_deploy.latency.auto import measure_table
    from hadmc_deploy.latency.lut import LatencyTable, LutMeta, Staircase
    from hadmc_deploy.latency.measure import backend_identity, get_backend

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(24, 40, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(40, 10)).eval()
    shape = (1, 3, 16, 16)
    graph = trace(model, shape)
    version, device = backend_identity(get_backend("onnxruntime"))
    path = tmp_path / "t.json"
    table = LatencyTable(LutMeta("cpu", "onnxruntime", version or "x", device or {}, 1, 1, "fp32", 8))
    table.staircase = Staircase(1, 1.0, {})  # as a probe that found no step
    table.save(path)
    opts = MeasureOptions(grid_points=2, passes=1, runs_per_pass=1, context=False)
    table, info = measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, path, options=opts)
    block = blocked_layout_width(table.meta.device)
    full = {24, 40, 10, 3}
    grid = [e.spec for e in table.entries.values() if e.role == "grid"]
    assert info["complete"] and grid
    assert all(c % block == 0 or c in full for s in grid for c in (s.in_channels, s.out_channels))
    off = [e.spec for e in table.entries.values() if e.role == "off_grid"]
    assert all(s.out_channels in (23, 39) or s.in_channels in (23, 39) for s in off)


def _demo_table_without_context(tmp_path, grid_points: int, runs_per_pass: int):  # noqa: ANN001, ANN202
    """The demo CNN at 1x1x28x28, its graph and an FP32 table measured quickly, no context fit."""
    from hadmc_deploy.latency.auto import measure_table

    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    opts = MeasureOptions(grid_points=grid_points, passes=1, runs_per_pass=runs_per_pass, context=False)
    table, _ = measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, tmp_path / "t.json", options=opts)
    return model, shape, graph, table


def test_the_probes_points_on_the_grid_are_grid_points(tmp_path):
    """The staircase sweep times the representative layers at their full width (and at other grid
    counts) before the grid; those points are not timed again, and must still be interpolation
    points of their family: without them the swept layer was priced by extrapolation between
    its full width and the grid below the sweep window (issue 13; the demo's fc at 80 inputs)."""
    from hadmc_deploy.latency.predictor import LutLatencyModel

    _, _, _, table = _demo_table_without_context(tmp_path, grid_points=4, runs_per_pass=1)
    fc = next(e.spec for e in table.entries.values() if e.spec.op == "linear" and e.spec.in_channels == 128)
    assert table.get(fc).role == "grid"  # timed by the sweep, on the grid
    lm = LutLatencyModel(table, warn_extrapolation=False)
    step = table.alignment() if table.alignment() > 1 else 16
    ms, how = lm.layer_ms(fc.with_channels(128 - 3 * step, fc.out_channels))
    assert how != "lut-extrap" and ms > 0


def test_an_isolated_step_the_deployed_graphs_do_not_pay_for_is_profiled_again(tmp_path, monkeypatch):
    """After the context fit at the isolated probe's step (here 12, set as if probed: a step that
    does not divide the blocked width, which context_step would otherwise profile), a table whose
    deployed graphs show no cost of leaving that step is profiled again on the CPU's blocked width;
    the second fit is kept only where leaving that width costs (the threshold is forced here, to
    take both branches on any machine)."""
    import hadmc_deploy.latency.lut as lut_module
    from hadmc_deploy.latency.alignment import blocked_layout_width
    from hadmc_deploy.latency.auto import measure_table
    from hadmc_deploy.latency.lut import LatencyTable, LutMeta, Staircase
    from hadmc_deploy.latency.measure import backend_identity, get_backend

    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    version, device = backend_identity(get_backend("onnxruntime"))
    block = blocked_layout_width(device or {})
    opts = MeasureOptions(grid_points=2, passes=1, runs_per_pass=1, context_rounds=1, exporter="fast")

    def measured(name: str) -> tuple[LatencyTable, dict]:
        path = tmp_path / f"{name}.json"
        table = LatencyTable(LutMeta("cpu", "onnxruntime", version or "x", device or {}, 1, 1, "fp32", 8, method={"statistic": "mom"}))
        table.staircase = Staircase(12, 1.25, {"conv": {"step": 12, "penalty": 1.25, "mode": "line"}})
        table.save(path)
        return measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, path, options=opts)

    monkeypatch.setattr(lut_module, "CONTEXT_STEP_PENALTY", 1e9)  # no step ever pays
    table, info = measured("never")
    assert info["context_refit"]["isolated_step"] == 12 and info["context_refit"]["blocked_width"] == block
    assert table.context.step == 12 and table.alignment() == 12  # the second fit did not pay either: the first is kept
    monkeypatch.setattr(lut_module, "CONTEXT_STEP_PENALTY", -1.0)  # every step pays
    table, info = measured("always")
    assert "context_refit" not in info and table.context.step == 12 and table.alignment() == 12
    monkeypatch.setattr(lut_module.ContextCorrection, "step_pays", lambda self: self.step == block)  # only the blocked width pays
    table, info = measured("blocked")
    assert info["context_refit"]["blocked_width"] == block
    assert table.context.step == block and table.alignment() == block  # the search rounds to what the deployed graphs pay for


def test_torchscript_pooling_head_is_written_as_deployed(tmp_path):
    """The TorchScript export's GlobalAveragePool + Flatten become ReduceMean + Reshape (how the
    dynamo exporter writes adaptive pooling), with the same outputs."""
    import numpy as np
    import onnxruntime as ort

    from hadmc_deploy.onnx_passes import op_counts, pooling_as_reduce_mean

    torch.manual_seed(0)
    model = demo_cnn().eval()
    path = tmp_path / "ts.onnx"
    with torch.no_grad():
        torch.onnx.export(model, torch.zeros(2, 1, 28, 28), str(path), dynamo=False, opset_version=18, input_names=["input"], output_names=["output"])
    before = onnx.load(str(path))
    after, rewritten = pooling_as_reduce_mean(before)
    assert rewritten == 1 and op_counts(before).get("GlobalAveragePool") == 1
    ops = op_counts(after)
    assert "GlobalAveragePool" not in ops and "Flatten" not in ops and ops["ReduceMean"] == 1 and ops["Reshape"] == 1
    onnx.checker.check_model(after)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] for m in (before, after)]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    assert pooling_as_reduce_mean(after)[1] == 0  # nothing left to rewrite
    pool1d = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
    with torch.no_grad():
        torch.onnx.export(pool1d.eval(), torch.zeros(1, 2, 8), str(tmp_path / "p1.onnx"), dynamo=False, opset_version=18)
    assert pooling_as_reduce_mean(onnx.load(str(tmp_path / "p1.onnx")))[1] == 0  # a 1-D pool's spatial axis is its last only: left alone


@pytest.mark.parametrize("same_kernels", [True, False])
def test_context_plans_take_the_torchscript_export_only_where_it_runs_the_deployed_kernels(tmp_path, monkeypatch, same_kernels):
    """The full plan is always built as deployed; the other plans are exported by TorchScript only
    when its full-model session runs the deployed session's kernels, in order (checked for real here;
    forced to differ in the second case), and each fitted plan records its exporter."""
    import hadmc_deploy.latency.context_build as context_build
    from hadmc_deploy.latency.context import fit_context
    from hadmc_deploy.latency.measure import get_backend

    model, shape, graph, table = _demo_table_without_context(tmp_path, grid_points=2, runs_per_pass=2)
    real = context_build.kernel_ops
    seen = []

    def kernels(artifact, batch, threads):  # noqa: ANN001, ANN202
        ops = real(artifact, batch, threads)
        seen.append(ops)
        return ops if same_kernels or len(seen) % 2 else [*ops, "Identity"]

    monkeypatch.setattr(context_build, "kernel_ops", kernels)
    ctx = fit_context(table, model, graph, shape, get_backend("onnxruntime"), rounds=1, runs=2)
    assert len(seen) == 2 and "Conv" in seen[0] and seen[0] == seen[1]  # for real, TorchScript's graph of the demo CNN runs the same kernels
    exporters = {row["plan"]: row["exporter"] for row in ctx.fitted_on}
    assert exporters.pop("full") == "deploy" and len(exporters) >= 3
    assert set(exporters.values()) == {"fast" if same_kernels else "deploy"}


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_an_off_grid_plan_runs_the_deployed_kernels_from_its_torchscript_export(tmp_path, precision):
    """The context fit checks TorchScript's graph against the deployed one on the full plan only, and
    then exports its off-grid plans with TorchScript. With random weights a folded BatchNorm's bias
    is zero and the dynamo exporter dropped it: off the NCHWc path ONNX Runtime then ran Conv, Add and
    Relu as three kernels where TorchScript's graph ran one FusedConv (the demo CNN's odd widths; both
    exports now give such a Conv a zero bias, `onnx_passes.bias_for_add_fusion`)."""
    from hadmc_deploy.latency.context_build import build_deployed_artifact, kernel_ops
    from hadmc_deploy.latency.context_plans import offgrid_plan
    from hadmc_deploy.latency.measure import get_backend

    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    widths = offgrid_plan(graph, 0.75)
    backend = get_backend("onnxruntime")
    kernels = {}
    for exporter in ("fast", "deploy"):
        _, artifact = build_deployed_artifact(model, graph, widths, shape, backend, precision, tmp_path, exporter, exporter=exporter)
        kernels[exporter] = kernel_ops(artifact, 1, None)
    assert "Conv" in kernels["deploy"] or "QLinearConv" in kernels["deploy"]
    assert kernels["fast"] == kernels["deploy"]
    if precision == "fp32":
        assert "Add" not in kernels["deploy"]  # each residual Add fused into its conv


def test_a_model_torchscript_cannot_export_is_profiled_as_deployed_and_quietly(capfd):
    """Adaptive pooling to a non-divisor: the TorchScript exporter fails (and prints its whole IR
    graph from C++); the context plans are then exported as deployed, and nothing reaches stdout."""
    import tempfile
    from pathlib import Path

    from torch import nn

    from hadmc_deploy.latency.context_build import build_deployed_artifact, faster_exporter
    from hadmc_deploy.latency.measure import get_backend

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 4)).eval()
    shape = (1, 1, 8, 8)
    graph = trace(model, shape)
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        _, deployed = build_deployed_artifact(model, graph, graph.full_widths(), shape, backend, "fp32", Path(tmp), "full")
        capfd.readouterr()
        assert faster_exporter(model, graph, shape, backend, "fp32", Path(tmp), deployed, 1, None) == "deploy"
    assert "Torch IR graph" not in capfd.readouterr().out


def test_context_fit_of_a_grouped_model_profiles_crossed_plans_and_prices_with_what_it_kept(tmp_path):
    """A graph with a grouped conv: the fit profiles the two crossed plans, any channel form it keeps
    (latency/channel_form.py) is four non-negative coefficients of a grouped conv's regime, and the
    table prices plans whose grouped conv sits off the step per group, at positive finite times."""
    import math

    from hadmc_deploy.latency.auto import measure_table
    from hadmc_deploy.latency.predictor import LutLatencyModel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 128, 3, padding=1, groups=4), torch.nn.ReLU(),
                                torch.nn.Conv2d(128, 64, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    shape = (1, 3, 16, 16)
    graph = trace(model, shape)
    opts = MeasureOptions(grid_points=2, passes=1, runs_per_pass=1, context_rounds=1, exporter="fast")
    table, _ = measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, tmp_path / "t.json", options=opts)
    assert {"crossed", "crossed-reverse"} <= {row["plan"] for row in table.context.fitted_on}
    for layer, factors in zip(graph.layers, table.context.factors, strict=True):
        for key, value in factors.items():
            if key.endswith("_form"):
                assert layer.spec.op == "gconv" and len(value) == 4 and min(value) >= 0.0
    model_lm = LutLatencyModel(table, warn_extrapolation=False)
    for widths in ({g.id: 40 for g in graph.prunable_groups}, {g.id: max(g.granularity, g.width // 2 - 4) for g in graph.prunable_groups}):
        total = model_lm.predict(graph.layer_specs(widths)).total_ms
        assert total > 0 and math.isfinite(total)


class _PreActivationBlock(torch.nn.Module):
    """A DenseNet-like block: the BatchNormalization after a Concat, which no conv absorbs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.grow = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(64)
        self.out = torch.nn.Conv2d(64, 32, 1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.norm(torch.cat([x, self.grow(x)], 1)))
        return self.head(self.out(x).mean((2, 3)))


def test_a_batchnorm_turned_into_an_nchwc_conv_is_glue_not_a_layer(tmp_path):
    """ORT's NCHWc transformer runs a standalone BatchNormalization as a Conv named `..._bn_nchwc`:
    the profile must still pair one kernel with each weighted node of the source (a DenseNet's
    FP32 profile had 183 weighted kernels for 121 layers, and the build stopped)."""
    from hadmc_deploy.latency.ort_profile import NCHWC_BATCHNORM_SUFFIX

    torch.manual_seed(0)
    model = _PreActivationBlock().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    f = export_for_timing(model, (1, 1, 32, 32), tmp_path / "f.onnx", exporter="fast")
    source = onnx.load(str(f))
    assert "BatchNormalization" in {n.op_type for n in source.graph.node}
    prof = profile_session(f, batch=1, runs=2)
    times = layer_times(prof, source)
    assert set(times) == {name for name, _ in source_weighted_nodes(source)} and len(times) == 4
    bn_convs = [k for k in prof.kernels if k.name.endswith(NCHWC_BATCHNORM_SUFFIX)]
    assert all(not k.weighted for k in bn_convs)  # on CPUs with an NCHWc layout there is one; it is glue


def test_the_fit_is_a_function_of_its_measurements_and_fits_any_subset(tmp_path):
    """The context fit reads only what `measure_plans` measured: two fits of the same
    measurements agree exactly (what tools/ablate_context_plans.py relies on to compare plan
    sets without the machine's drift between them), a plan left out is not fitted on, and each
    profiled plan is priced at what it measured."""
    import copy
    from dataclasses import replace

    from hadmc_deploy.latency.context import fit_measured
    from hadmc_deploy.latency.context_measure import measure_plans
    from hadmc_deploy.latency.context_plans import calibration_plans, context_step
    from hadmc_deploy.latency.measure import get_backend
    from hadmc_deploy.latency.predictor import LutLatencyModel

    model, shape, graph, table = _demo_table_without_context(tmp_path, grid_points=2, runs_per_pass=1)
    step = context_step(table)
    plans = calibration_plans(graph, step)
    measured = measure_plans(table, model, graph, shape, get_backend("onnxruntime"), plans=plans, rounds=1, runs=2, exporter="fast")
    assert set(measured.model_ms) == set(plans) and all(len(v) == len(measured.weighted_idx) for v in measured.layer_ms.values())
    first, second = copy.deepcopy(table), copy.deepcopy(table)
    fit_measured(first, graph, measured, step)
    fit_measured(second, graph, measured, step)
    assert first.context.to_dict() == second.context.to_dict()
    dropped = next((n for n in plans if n.startswith("offgrid")), list(plans)[-1])  # the last plan where no step gives off-grid ones
    fewer = copy.deepcopy(table)
    fit_measured(fewer, graph, measured.subset([n for n in plans if n != dropped]), step)
    assert dropped not in {r["plan"] for r in fewer.context.fitted_on} and len(fewer.context.fitted_on) == len(plans) - 1
    lm = LutLatencyModel(first, warn_extrapolation=False)
    for name in ("full", dropped):  # a profiled plan is priced near what it measured
        total = lm.predict([replace(s, precision="fp32", batch=1) for s in graph.layer_specs(plans[name])]).total_ms
        assert total == pytest.approx(measured.model_ms[name], rel=0.25)


class _NonLocal(torch.nn.Module):
    """A non-local block: two MatMuls between activations (no weight) beside the convs."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem, self.theta, self.phi, self.g, self.w = conv(3, 16, 3, padding=1), conv(16, 8, 1), conv(16, 8, 1), conv(16, 8, 1), conv(8, 16, 1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        n, _, h, w = x.shape
        a = torch.softmax(self.theta(x).flatten(2).transpose(1, 2) @ self.phi(x).flatten(2), dim=-1)
        y = (a @ self.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
        return self.fc((x + self.w(y)).mean((2, 3)))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_products_of_activations_are_glue_not_layers(tmp_path, precision):
    """The source graph counts no MatMul between two activations as weighted, ONNX Runtime's profile
    did (a FusedMatMul, a QLinearMatMul): the counts never paired and a non-local CNN lost its
    per-layer correction and its mixed INT8/FP32 graph. Every weighted node now gets a time, and the
    products' time lands on their neighbours as glue (the times add up to the kernels')."""
    torch.manual_seed(0)
    shape = (2, 3, 12, 12)
    f = export_for_timing(_NonLocal().eval(), shape, tmp_path / "f.onnx", exporter="deploy")
    path = f if precision == "fp32" else write_qdq(f, _timing_ranges(f, shape), tmp_path / "q.onnx", form="qdq_u8s8", placement="onnxruntime")
    src = onnx.load(str(f))
    prof = profile_session(path, batch=2, runs=3)
    assert sum(1 for k in prof.kernels if k.weighted) > len(source_weighted_nodes(src))  # the products, counted as weighted kernels
    times = layer_times(prof, src)
    assert set(times) == {n for n, _ in source_weighted_nodes(src)}
    assert sum(times.values()) == pytest.approx(prof.kernel_sum_ms, rel=1e-6)
