"""The architecture matrix: zero-then-prune equivalence at 30% and 50%, and ONNX Runtime parity.

Default run: small inputs (32-64 px). `-m slow`: the full-size inputs.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hadmc_deploy.graph.check import output_tensors, prune_equivalence
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.models.matrix import MATRIX, SLOW_ONLY
from hadmc_deploy.profile import profile_model

torch.set_num_threads(1)


def _onnx_max_diff(model: torch.nn.Module, shape: tuple[int, ...], path) -> float:  # noqa: ANN001
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    try:
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=[f"output{i}" for i in range(len(output_tensors(model(x))))])
    except torch.onnx.errors.SymbolicValueError:
        # the legacy exporter refuses adaptive pooling to a non-divisor size (VGG's 7x7 at small inputs)
        torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, opset_version=18, input_names=["input"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in output_tensors(model(x))]
    assert len(got) == len(want)
    return max(float(np.abs(a - b).max()) for a, b in zip(got, want, strict=True))


def _check(name: str, builder, shape: tuple[int, ...], tmp_path) -> None:  # noqa: ANN001
    model = builder()
    graph = trace(model, shape)
    assert graph.prunable_groups, name
    before = profile_model(model, shape)
    for ratio in (0.3, 0.5):
        res = prune_equivalence(model, shape, ratio, seed=int(ratio * 10), graph=graph)
        assert res.pruned_groups > 0
        assert res.zeroing_effect > 1e-4, f"{name}: zeroing did not move the output, the check would prove nothing"
        assert res.max_abs_diff < 1e-5, f"{name} at {ratio}: pruned output differs by {res.max_abs_diff}"
        after = profile_model(res.pruned, shape)
        assert after.params < before.params and after.macs < before.macs
        assert after.output_shape == before.output_shape
    # the pruned model exports and ONNX Runtime agrees with it
    assert _onnx_max_diff(res.pruned, shape, tmp_path / f"{name}.onnx") < 1e-4
    # the original model was not touched by surgery
    assert profile_model(model, shape).params == before.params


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_matrix_small(name: str, tmp_path) -> None:  # noqa: ANN001
    builder, small, _ = MATRIX[name]
    _check(name, builder, small, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({**MATRIX, **SLOW_ONLY}))
def test_matrix_full_size(name: str, tmp_path) -> None:  # noqa: ANN001
    builder, _, full = {**MATRIX, **SLOW_ONLY}[name]
    _check(name, builder, full, tmp_path)
