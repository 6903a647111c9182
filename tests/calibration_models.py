"""Tiny models for the calibration/QDQ tests: a residual CNN trained for seconds on real data (digits)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset, load_data
from hadmc_deploy.train import train_classifier


class TinyResNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block with a 1x1 downsample shortcut, one identity block, GAP, Linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a1 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.b1 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(self.a1(x) + self.down(x))
        x = self.relu(self.b1(x) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def export(model: nn.Module, input_shape: tuple[int, ...], path: Path, verify_inputs=None) -> Path:  # noqa: ANN001
    """The project's exporter (simplified, BN folded, verified in ORT)."""
    from hadmc_deploy.export import export_onnx

    return Path(export_onnx(model.eval(), input_shape, path, verify_inputs=verify_inputs).path)


def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_data("builtin:digits:train"), load_data("builtin:digits:test")


def trained_tiny(train: ArrayDataset) -> TinyResNet:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster than two fighting over a shared CPU
    try:
        torch.manual_seed(0)  # the initial weights too: they drew from whatever state earlier tests left
        return train_classifier(TinyResNet(), train, epochs=2, lr=0.1, batch_size=64, seed=0)
    finally:
        torch.set_num_threads(threads)


def _scratch_dir() -> Path:
    """A directory for this process's exported models, removed when it exits."""
    path = Path(tempfile.mkdtemp(prefix="hadmc-calib-tests-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def tiny_digits_onnx() -> tuple[Path, ArrayDataset, ArrayDataset]:
    """(float ONNX of TinyResNet trained on digits, train split, test split), built once per test process."""
    train, test = digits()
    model = trained_tiny(train)
    path = _scratch_dir() / "tiny.onnx"
    return export(model, (1, 1, 8, 8), path, verify_inputs=test.x[:32]), train, test


@functools.cache
def mbv3_digits_onnx() -> tuple[Path, ArrayDataset, ArrayDataset]:
    """(float ONNX of a MobileNetV3-style net - depthwise, SE, hardswish - trained on digits in [0, 1], train, test)."""
    from hadmc_deploy.data import Preprocess
    from hadmc_deploy.models.mobilenet_v3 import mobilenet_v3_small

    pre = Preprocess(mean=(0.0,), std=(1.0,))  # inputs in [0, 1], as the user's model took them
    train, test = load_data("builtin:digits:train", pre), load_data("builtin:digits:test", pre)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = train_classifier(mobilenet_v3_small(), train, epochs=5, lr=0.05, batch_size=64, seed=0)
    finally:
        torch.set_num_threads(threads)
    path = _scratch_dir() / "mbv3.onnx"
    return export(model, (1, 1, 8, 8), path, verify_inputs=test.x[:32]), train, test
