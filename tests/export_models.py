"""Tiny models for the export and ONNX Runtime backend tests (fast to export on 2 cores)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class TinyConvBN(nn.Module):
    """Conv+BN+ReLU twice, pooled into a linear head: what every BN-folding claim is about."""

    def __init__(self, in_channels: int = 1, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, classes)
        # Non-trivial running statistics, so folding them wrongly would show in the outputs.
        gen = torch.Generator().manual_seed(0)
        for m in self.body:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
                m.weight.data.copy_(torch.rand(8, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(8, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


class DataDependentBranch(nn.Module):
    """Python control flow on a tensor value: torch.export (dynamo) rejects it, TorchScript tracing records one branch.

    The branch condition is true for every non-zero input, so the traced graph is right.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.abs().sum() > 0:
            return torch.relu(y).flatten(1)
        return y.flatten(1)


def conv_bn_onnx(seed: int = 0) -> onnx.ModelProto:
    """A hand-written Conv -> BatchNormalization -> Relu graph, as an exporter in training mode would leave it."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
        numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "mean"),
        numpy_helper.from_array((rng.random(4) + 0.5).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3, name="bn"),
        helper.make_node("Relu", ["bn"], ["output"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
