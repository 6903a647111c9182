"""Measurement: grid, resume after interruption, cache, budget; timing graphs run in ORT."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest
from latency_models import tiny_graph

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.latency.lut import read_table
from hadmc_deploy.latency.measure import (
    backend_timer,
    get_backend,
    grid_values,
    measure_specs,
    open_table,
    specs_for_graph,
)
from hadmc_deploy.layer_onnx import OP_BUILDERS, example_inputs, layer_model
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import get_target


def test_grid_values_are_aligned_and_include_the_full_width():
    values = grid_values(100, 8, floor=10)
    assert values[-1] == 100 and all(v % 8 == 0 for v in values[:-1]) and values[0] == 16
    assert grid_values(64, 8, step=16) == [8, 16, 32, 48, 64]


def test_grid_covers_each_free_axis():
    specs = specs_for_graph(tiny_graph(), 8, grid_step=16)
    keys = {s.key() for s in specs}
    assert len(keys) == len(specs)
    conv2 = [s for s in specs if s.op == "conv" and s.in_channels != 3]
    assert {s.in_channels for s in conv2} == {8, 16, 32} and {s.out_channels for s in conv2} == {8, 16, 32, 48, 64}
    pools = [s for s in specs if s.op == "globalpool"]
    assert all(s.in_channels == s.out_channels for s in pools)  # one free axis: in == out


def _setup(tmp_path):
    target, backend = get_target("cpu"), get_backend("onnxruntime")
    path = tmp_path / "lut.json"
    specs = specs_for_graph(tiny_graph(), 8, grid_step=32)[:8]
    table = open_table(path, target, backend, precision="fp32", batch=1, warmup=1, runs=3)
    return target, backend, path, specs, table


def test_resume_after_interruption_keeps_what_was_measured(tmp_path):
    target, backend, path, specs, table = _setup(tmp_path)
    real = backend_timer(backend, 1, 3)
    calls = []

    def interrupted(spec):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(spec)
        return real(spec)

    with pytest.raises(KeyboardInterrupt):
        measure_specs(specs, table, path, interrupted, flush_every=2)
    kept = read_table(path)  # valid JSON, all three measured entries there
    assert len(kept) == 3 and {s.key() for s in calls} == set(kept.entries)
    # resume: a fresh run measures only the rest
    table = open_table(path, target, backend, precision="fp32", batch=1, warmup=1, runs=3)
    report = measure_specs(specs, table, path, real)
    assert report.cached == 3 and report.measured == len(specs) - 3
    # cache: a second run for the same specs measures nothing
    def never(spec):
        raise AssertionError("measured a cached spec")

    table = open_table(path, target, backend, precision="fp32", batch=1, warmup=1, runs=3)
    report = measure_specs(specs, table, path, never)
    assert report.measured == 0 and report.cached == len(specs)
    assert json.loads(path.read_text())["entries"]


def test_budget_stops_cleanly(tmp_path):
    _, backend, path, specs, table = _setup(tmp_path)
    report = measure_specs(specs, table, path, backend_timer(backend, 1, 3), budget_minutes=0)
    assert report.stopped_by_budget and report.measured == 0
    assert read_table(path).meta.precision == "fp32"


def test_resume_refuses_other_precision(tmp_path):
    target, backend, path, specs, table = _setup(tmp_path)
    measure_specs(specs[:1], table, path, backend_timer(backend, 1, 3))
    with pytest.raises(LatencyModelError, match="fp32"):
        open_table(path, target, backend, precision="int8", batch=1, warmup=1, runs=3)


SPECS = [
    LayerSpec("conv", 16, 24, (3, 3), (1, 1), (1, 1), in_hw=(8, 8), out_hw=(8, 8), activation="relu"),
    LayerSpec("dwconv", 16, 16, (3, 3), (2, 2), (1, 1), groups=16, in_hw=(8, 8), out_hw=(4, 4), activation="relu6"),
    LayerSpec("gconv", 16, 16, (3, 3), (1, 1), (1, 1), groups=4, in_hw=(8, 8), out_hw=(8, 8), activation="silu"),
    LayerSpec("convtranspose", 16, 8, (2, 2), (2, 2), in_hw=(4, 4), out_hw=(8, 8)),
    LayerSpec("linear", 32, 10),
    LayerSpec("maxpool", 16, 16, (3, 3), (2, 2), (1, 1), in_hw=(8, 8), out_hw=(4, 4), bias=False),
    LayerSpec("avgpool", 16, 16, (2, 2), (2, 2), in_hw=(8, 8), out_hw=(4, 4), bias=False),
    LayerSpec("globalpool", 16, 16, in_hw=(8, 8), out_hw=(1, 1), bias=False),
    LayerSpec("add", 16, 16, in_hw=(8, 8), out_hw=(8, 8), n_inputs=2, activation="relu"),
    LayerSpec("mul", 16, 16, in_hw=(8, 8), out_hw=(8, 8), n_inputs=2),
    LayerSpec("concat", 16, 40, in_hw=(8, 8), out_hw=(8, 8), n_inputs=2, extra=(("in_channels", (16, 24)),)),
    LayerSpec("act", 16, 16, in_hw=(8, 8), out_hw=(8, 8), activation="gelu"),
    LayerSpec("upsample", 16, 16, in_hw=(4, 4), out_hw=(8, 8)),
    LayerSpec("norm", 16, 16, in_hw=(8, 8), out_hw=(8, 8)),
]


def test_every_op_kind_has_a_timing_graph():
    assert {s.op for s in SPECS} == set(OP_BUILDERS)


@pytest.mark.parametrize("form", [None, "qdq_u8s8", "qdq_s8s8"])
def test_timing_graphs_run_in_onnxruntime(form):
    for spec in SPECS:
        if form is not None:
            spec = LayerSpec.from_dict({**spec.to_dict(), "precision": "int8"})
        model = layer_model(spec, int8_form=form)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, example_inputs(model))[0]
        expected = (spec.batch, spec.out_channels) + (() if spec.op == "linear" else spec.out_hw)
        assert out.shape == expected, spec.op
        if form is not None:  # quantized in, quantized out: the integer kernel runs, no float boundary
            assert out.dtype.kind in "iu"
            types = {n.op_type for n in model.graph.node}
            assert "DequantizeLinear" in types and "QuantizeLinear" in types


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(LatencyModelError, match="activation"):
        layer_model(LayerSpec("conv", 8, 8, activation="mish-ish"))


def test_int8_layers_measure_through_the_backend(tmp_path):
    target, backend = get_target("cpu"), get_backend("onnxruntime")
    path = tmp_path / "int8.json"
    table = open_table(path, target, backend, precision="int8", batch=1, warmup=1, runs=3)
    specs = [LayerSpec.from_dict({**s.to_dict(), "precision": "int8"}) for s in SPECS[:2]]
    report = measure_specs(specs, table, path, backend_timer(backend, 1, 3))
    assert report.measured == 2
    saved = read_table(path)
    assert saved.meta.precision == "int8" and saved.meta.int8_form == target.int8_form


def test_cpu_clock_timer_measures_single_thread_cpu_time(tmp_path):
    from hadmc_deploy.latency.measure import cpu_time_timer

    timer = cpu_time_timer(2, 5)
    # 64x the work: at 4x (tens of microseconds each) another job's load once reordered the two
    small, big = SPECS[0], SPECS[0].with_channels(64, 384)
    a, b = timer(small), timer(big)
    assert a.runs == 5 and a.p50_ms > 0
    assert b.p50_ms > a.p50_ms  # far more work costs more CPU time


def test_timing_exports_restore_torchs_thread_count() -> None:
    """Surgery and export beside timing run PyTorch on one thread; the build's later stages
    (recovery, BN recalibration) must get their threads back."""
    import torch

    from hadmc_deploy.latency.whole_model import single_torch_thread

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), single_torch_thread():
            raise RuntimeError("an export failed")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
