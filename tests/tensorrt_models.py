"""Small real ONNX graphs for the TensorRT-area tests (made with onnx.helper: no export needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

#: tests that check what a machine WITHOUT TensorRT says skip themselves where it is installed (the GPU host).
requires_no_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                                          reason="TensorRT is installed here; this test checks the behaviour without it")


def tiny_cnn(path: Path, *, batch: int | str = "N", channels: int = 1, hw: int | str = 8, classes: int = 4, seed: int = 0) -> Path:
    """input [batch, C, hw, hw] -> Conv 3x3 -> Relu -> GlobalAveragePool -> Flatten -> output [batch, classes]."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((classes, channels, 3, 3)).astype(np.float32), "conv.weight")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "conv.bias")
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv_out"], pads=[1, 1, 1, 1], name="/conv/Conv"),
        helper.make_node("Relu", ["conv_out"], ["relu_out"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pool_out"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["pool_out"], ["output"], name="/flatten/Flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, hw, hw])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_qdq_cnn(path: Path, *, scale: float = 0.02) -> Path:
    """tiny_cnn with a QuantizeLinear/DequantizeLinear pair on the input (S8S8 form): enough for QDQ detection."""
    model = onnx.load(str(tiny_cnn(path)))
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, dtype=np.float32), "input_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "input_zp"),
    ])
    q = helper.make_node("QuantizeLinear", ["input", "input_scale", "input_zp"], ["input_q"], name="input_Q")
    dq = helper.make_node("DequantizeLinear", ["input_q", "input_scale", "input_zp"], ["input_dq"], name="input_DQ")
    graph.node[0].input[0] = "input_dq"
    nodes = [q, dq, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
