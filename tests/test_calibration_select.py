"""The held-out range choice's arithmetic: fake quantization as ONNX Runtime computes it, and its
squared error computed in place."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hadmc_deploy.calibration.ranges import TensorRange
from hadmc_deploy.calibration.select import HeldOutError, fake_quantize, quantization_sq_error


def _ort_qdq(x: np.ndarray, scale: float, zero: int, dtype: int) -> np.ndarray:
    zp = np.array(zero, np.uint8 if dtype == TensorProto.UINT8 else np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))], [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("symmetric", [True, False])
def test_fake_quantize_matches_onnx_runtime_and_the_in_place_error_matches_it(symmetric: bool) -> None:
    x = np.random.default_rng(0).standard_normal((4, 8, 16, 16)).astype(np.float32) * 2.0
    rng = TensorRange(3.0, -1.5, 3.0)  # clips both tails of the asymmetric range
    got = fake_quantize(x, rng, symmetric)
    assert got.dtype == np.float32  # float64 arithmetic was 6x slower and not what ORT computes
    if symmetric:
        ref = _ort_qdq(x, 3.0 / 127.0, 0, TensorProto.INT8)
    else:
        scale = 4.5 / 255.0
        ref = _ort_qdq(x, scale, int(np.round(1.5 / scale)), TensorProto.UINT8)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    diff = (got - x).ravel().astype(np.float64)
    assert quantization_sq_error(x, rng, symmetric) == pytest.approx(float(diff @ diff), rel=1e-5)
    work = np.empty_like(x)
    assert quantization_sq_error(x, rng, symmetric, work) == quantization_sq_error(x, rng, symmetric)


def test_the_held_out_choice_prefers_the_range_that_quantizes_closest() -> None:
    x = np.random.default_rng(1).standard_normal((8, 1000)).astype(np.float32)
    tight, loose = TensorRange(3.5, -3.5, 3.5, method="percentile"), TensorRange(40.0, -40.0, 40.0, method="minmax")
    held = HeldOutError({"t": {"percentile": tight, "minmax": loose}}, symmetric=True)
    held.observe("t", x)
    assert held.best()["t"].method == "percentile"
