"""Tiny hand-written models and dependency graphs for the latency-model tests.

The graph is written by hand (not traced) so these tests depend only on the
`DependencyGraph`/`LayerSpec` interface, and the torch twin is built at any
widths directly, so whole-model timing needs no surgery.
"""

from __future__ import annotations

import torch
from torch import nn

from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph
from hadmc_deploy.specs import LayerSpec

HW = 24
FULL = {"g1": 32, "g2": 64}


class TinyNet(nn.Module):
    """conv3x3(3->c1)+relu -> conv3x3(c1->c2, stride 2)+relu -> global pool -> linear(c2->10)."""

    def __init__(self, c1: int = FULL["g1"], c2: int = FULL["g2"]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, 1, 1)
        self.conv2 = nn.Conv2d(c1, c2, 3, 2, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_graph(batch: int = 1) -> DependencyGraph:
    h2 = HW // 2
    layers = [
        CostedLayer("conv1", LayerSpec("conv", 3, 32, (3, 3), (1, 1), (1, 1), in_hw=(HW, HW), out_hw=(HW, HW), batch=batch, activation="relu"), (), "g1"),
        CostedLayer("conv2", LayerSpec("conv", 32, 64, (3, 3), (2, 2), (1, 1), in_hw=(HW, HW), out_hw=(h2, h2), batch=batch, activation="relu"), ("g1",), "g2"),
        CostedLayer("pool", LayerSpec("globalpool", 64, 64, in_hw=(h2, h2), out_hw=(1, 1), batch=batch, bias=False), ("g2",), "g2"),
        CostedLayer("fc", LayerSpec("linear", 64, 10, batch=batch), ("g2",), None),
    ]
    groups = [ChannelGroup("g1", 32, True), ChannelGroup("g2", 64, True)]
    return DependencyGraph(groups=groups, layers=layers, input_shape=(batch, 3, HW, HW))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResidualCNN(nn.Module):
    """The residual CNN of issue 13 (32/64/128 channels, one block per stage, 1x96x96 input)."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(_Block(widths[0], widths[0], 1), _Block(widths[0], widths[1], 2), _Block(widths[1], widths[2], 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))
