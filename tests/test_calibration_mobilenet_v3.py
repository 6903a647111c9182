"""The MobileNetV3-style case (depthwise, squeeze-excite, hardswish; digits in [0, 1]): entropy ranges must not break it."""

from __future__ import annotations

import numpy as np
import pytest
from calibration_models import mbv3_digits_onnx

from hadmc_deploy.calibration import observers
from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.observers import EntropyObserver
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.evaluate import onnx_accuracy


def test_entropy_refuses_the_degenerate_kl_threshold():
    gate = np.random.default_rng(0).uniform(0.4, 0.6, 100_000).astype(np.float32)  # a hardsigmoid gate
    obs = EntropyObserver()
    obs.observe(gate)
    assert obs.amax_kl_only() < 0.401  # TensorRT's KL alone clips every value to the minimum
    assert obs.amax() == pytest.approx(0.6, rel=1e-3)  # the guarded threshold keeps the gate


@pytest.mark.slow
def test_mobilenet_v3_int8_entropy_and_auto_keep_accuracy(tmp_path, monkeypatch):
    path, train, test = mbv3_digits_onnx()
    float_acc = onnx_accuracy(path, test)
    assert float_acc > 85
    accuracy = {}
    for method in ("entropy", "auto"):
        ranges = collect_ranges(path, train, method=method, num_samples=512)
        accuracy[method] = onnx_accuracy(write_qdq(path, ranges, tmp_path / f"{method}.onnx", form="qdq_u8s8"), test)
        assert float_acc - accuracy[method] <= 1.0, (method, float_acc, accuracy)
    gates = [n for n, t in ranges.tensors.items() if t.min > 0.1]  # SE means and hardsigmoid gates: all values away from 0
    assert gates
    monkeypatch.setattr(observers, "MAX_ENTROPY_CLIPPED", 1.1)  # the unguarded KL of before
    kl_only = collect_ranges(path, train, method="entropy", num_samples=512)
    assert all(kl_only.amax(g) <= kl_only.tensors[g].min * 1.05 for g in gates)  # the cause: every gate clipped to its minimum
    assert onnx_accuracy(write_qdq(path, kl_only, tmp_path / "kl.onnx", form="qdq_u8s8"), test) < accuracy["entropy"]
