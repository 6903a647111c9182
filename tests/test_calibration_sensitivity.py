"""Mixed precision: the layer whose quantization hurts most is measured as such and left in float."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
from calibration_models import tiny_digits_onnx

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.sensitivity import choose_precision_by_latency, select_float_layers
from hadmc_deploy.errors import UsageError


def test_most_sensitive_layer_is_kept_float():
    path, train, test = tiny_digits_onnx()
    ranges = collect_ranges(path, train, method="percentile", num_samples=64)
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    victim = convs[-1]  # last conv of the identity block; its input feeds only it
    broken = dict(ranges.tensors)
    rng = broken[victim.input[0]]
    broken[victim.input[0]] = dataclasses.replace(rng, amax=rng.amax * 0.02, max=rng.max * 0.02)  # clips ~everything
    sabotaged = dataclasses.replace(ranges, tensors=broken)
    result = select_float_layers(path, sabotaged, test, max_accuracy_drop=1.0, form="qdq_s8s8")
    assert result.float_accuracy - result.int8_accuracy > 1.0  # the sabotage really hurt
    assert result.sensitivities[0].node == victim.name
    assert result.float_nodes[0] == victim.name and "rank 1/" in result.reasons[victim.name]
    assert result.met and result.float_accuracy - result.final_accuracy <= 1.0
    assert len(result.float_nodes) < len(result.sensitivities)
    honest = select_float_layers(path, ranges, test, max_accuracy_drop=1.0, form="qdq_s8s8")
    assert honest.float_nodes == [] and honest.met  # good ranges: everything INT8
    with pytest.raises(UsageError):
        select_float_layers(path, ranges, test, max_accuracy_drop=-1)


def test_int8_slower_than_float_falls_back():
    fast = choose_precision_by_latency(int8_ms=1.0, float_ms=1.7)
    assert fast.precision == "int8" and fast.speedup == pytest.approx(1.7)
    slow = choose_precision_by_latency(int8_ms=2.0, float_ms=1.8)
    assert slow.precision == "fp32" and "falling back to float" in slow.note
    with pytest.raises(UsageError):
        choose_precision_by_latency(0, 1)
