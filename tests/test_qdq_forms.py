"""QDQ graphs in each form: structure (zero points, dtypes, per-channel axis, bias, placement) and numerics in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from calibration_models import tiny_digits_onnx
from onnx import numpy_helper

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.calibration.quantize import Int8Options, quantize_int8
from hadmc_deploy.calibration.trt_cache import read_cache
from hadmc_deploy.calibration.verify_qdq import ort_session, run_batches
from hadmc_deploy.errors import DataError, UsageError


@pytest.fixture(scope="module")
def tiny():
    path, train, test = tiny_digits_onnx()
    return path, train, test, collect_ranges(path, train, method="entropy", num_samples=128)


def _graph(path):
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return model, inits, producers, consumers


def test_tensorrt_form_structure(tiny, tmp_path):
    path, _, _, ranges = tiny
    out = write_qdq(path, ranges, tmp_path / "trt.onnx", form="qdq_s8s8")
    model, inits, producers, consumers = _graph(out)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: zero point must be int8 0"
        producer = producers.get(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if producer is not None and producer.op_type in ("Conv", "Gemm"):
            # never on a weighted op's output (Conv+BN+ReLU fuse), except a shortcut conv feeding a residual Add
            dq = consumers[node.output[0]][0]
            assert [c.op_type for c in consumers[dq.output[0]]] == ["Add"], node.name
        if node.op_type == "Relu":  # no Q/DQ between a conv and its ReLU
            assert producers[node.input[0]].op_type != "DequantizeLinear"
        if node.op_type in ("Conv", "Gemm"):
            act, weight = (producers[i] for i in node.input[:2])
            assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
            w_int8 = inits[weight.input[0]]
            assert w_int8.dtype == np.int8
            axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
            if node.op_type == "Conv":
                assert axis == 0 and inits[weight.input[1]].shape == (w_int8.shape[0],)  # per output channel
            if len(node.input) > 2:  # bias stays float: TensorRT quantizes it itself
                assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 2
    for add in adds:  # exactly one input (the skip) is quantized, the other comes straight from its conv
        kinds = sorted(producers[i].op_type for i in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], kinds
    props = {p.key: p.value for p in model.metadata_props}
    assert props["hadmc.int8_form"] == "qdq_s8s8" and props["hadmc.qdq_placement"] == "tensorrt"


def test_onnxruntime_u8s8_form_structure(tiny, tmp_path):
    path, _, _, ranges = tiny
    out = write_qdq(path, ranges, tmp_path / "u8.onnx", form="qdq_u8s8")
    model, inits, producers, _ = _graph(out)
    act_zp = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert len(weight_dq) == 7  # six convs and the Gemm, int8 symmetric weights
    assert all(not inits[n.input[2]].any() for n in weight_dq)
    assert not [n for n in model.graph.node if n.op_type == "Relu"]  # folded into the uint8 zero point
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(producers[n.input[2]].op_type == "DequantizeLinear" for n in convs)  # int32 bias for QLinearConv
    assert all(inits[producers[n.input[2]].input[0]].dtype == np.int32 for n in convs)


@pytest.mark.parametrize("form", ["qdq_s8s8", "qdq_u8s8"])
def test_qdq_runs_close_to_float_and_keeps_accuracy(tiny, tmp_path, form):
    path, train, test, ranges = tiny
    result = quantize_int8(path, train, tmp_path, Int8Options(method="entropy", form=form, samples=128))
    assert result.deployable and result.guard is not None and result.guard.mode == "agreement"
    assert result.check.top1_agreement >= 0.95 and result.check.snr_db > 15 and result.check.rel_err < 0.1
    assert result.heldout_source.startswith("1024 held-out samples")  # the check ran on samples the ranges never saw, enough to vouch for 1 point
    float_logits = run_batches(ort_session(path), test.x)
    int8_logits = run_batches(ort_session(result.qdq_path), test.x)
    float_acc = 100 * (float_logits.argmax(1) == test.y).mean()
    int8_acc = 100 * (int8_logits.argmax(1) == test.y).mean()
    assert float_acc > 85 and float_acc - int8_acc <= 1.5, (float_acc, int8_acc)
    scales = read_cache(result.trt_cache_path)  # TensorRT cache next to scales.json, scale = amax / 127
    assert scales["input"] == pytest.approx(ranges.amax("input") / 127, rel=1e-6)
    assert result.trt_cache_header == "EntropyCalibration2"
    again = quantize_int8(path, train, tmp_path, Int8Options(method="entropy", form=form, samples=128, guard=None))
    assert again.ranges_reused and again.deployable


def test_float_nodes_stay_float_and_bad_options_fail(tiny, tmp_path):
    path, _, _, ranges = tiny
    first_conv = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")
    out = write_qdq(path, ranges, tmp_path / "mixed.onnx", form="qdq_s8s8", float_nodes=[first_conv])
    model, inits, producers, _ = _graph(out)
    conv = next(n for n in model.graph.node if n.name == first_conv)
    assert conv.input[1] in inits and inits[conv.input[1]].dtype == np.float32
    with pytest.raises(UsageError, match="form"):
        write_qdq(path, ranges, tmp_path / "x.onnx", form="qdq_fp8")
    with pytest.raises(UsageError, match="not a node"):
        write_qdq(path, ranges, tmp_path / "x.onnx", float_nodes=["nope"])
    partial = type(ranges)(dict(list(ranges.tensors.items())[:3]), "entropy", 1, "m", "d")
    with pytest.raises(DataError, match="recalibrate"):
        write_qdq(path, partial, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_constant_nodes_of_a_legacy_export_quantize(tmp_path):
    """GELU through the legacy exporter carries 0.5 and sqrt(2) as Constant nodes; the QDQ
    graph is written (ORT's quantizer once failed: "Quantization parameters are not
    specified") and runs close to float."""
    import torch
    from torch import nn

    from hadmc_deploy.data import ArrayDataset
    from hadmc_deploy.latency.whole_model import export_for_timing

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path / "gelu.onnx"
    export_for_timing(model, (32, 1, 8, 8), path, exporter="fast")  # the latency check's export
    assert any(n.op_type == "Constant" for n in onnx.load(str(path)).graph.node)
    x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    ranges = collect_ranges(path, ArrayDataset(x, np.zeros(32, np.int64), "random"), method="minmax", num_samples=32)
    out = write_qdq(path, ranges, tmp_path / "gelu_qdq.onnx", form="qdq_u8s8")
    got = ort_session(out).run(None, {"input": x})[0]
    want = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
