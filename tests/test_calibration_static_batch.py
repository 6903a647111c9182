"""Calibration of a model exported with a fixed batch: only full batches of that size are fed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import DataError


@pytest.fixture
def fixed_batch_onnx(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (torch.zeros(8, 1, 6, 6),), str(path), dynamo=False, input_names=["input"], output_names=["output"])
    return path


def _data(n: int) -> ArrayDataset:
    x = np.random.default_rng(0).standard_normal((n, 1, 6, 6)).astype(np.float32)
    return ArrayDataset(x, np.zeros(n, np.int64), "random")


def test_fixed_batch_model_calibrates_in_full_batches(fixed_batch_onnx):
    ranges = collect_ranges(fixed_batch_onnx, _data(20), method="minmax", num_samples=20)
    assert ranges.tensors and all(r.amax > 0 for r in ranges.tensors.values())


def test_fixed_batch_larger_than_the_data_is_a_clear_error(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 1)).eval()
    path = tmp_path / "b32.onnx"
    torch.onnx.export(model, (torch.zeros(32, 1, 6, 6),), str(path), dynamo=False, input_names=["input"], output_names=["output"])
    with pytest.raises(DataError, match="fixed batch of 32"):
        collect_ranges(path, _data(16), method="minmax", num_samples=16)
