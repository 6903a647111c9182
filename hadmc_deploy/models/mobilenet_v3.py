"""A small MobileNetV3-style classifier: depthwise convs, squeeze-excite, hardswish/hardsigmoid.

Why it exists: its activations are what INT8 calibration finds hard (signed hardswish
outputs with a long positive tail, hardsigmoid gates saturated at 1, SE products), so
the calibration tests and tools/bench_int8.py measure on it, trained on real data.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        s = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))
        return x * s


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.Hardswish) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class InvertedResidualV3(nn.Module):
    """1x1 expand -> depthwise k x k -> SE -> 1x1 project (+ residual when shapes match)."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, se: bool, act: type[nn.Module]) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_conv_bn(cin, hidden, 1, act=act))
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(8, hidden // 4)))
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV3Small(nn.Module):
    """A scaled-down MobileNetV3-Small (same block types and activations) for 1- or 3-channel images."""

    # (kernel, hidden, out, se, activation, stride)
    SETTING = (
        (3, 16, 16, True, nn.ReLU, 2),
        (3, 48, 24, False, nn.ReLU, 2),
        (3, 64, 24, False, nn.ReLU, 1),
        (5, 96, 40, True, nn.Hardswish, 2),
        (5, 120, 40, True, nn.Hardswish, 1),
        (5, 144, 48, True, nn.Hardswish, 1),
    )

    def __init__(self, num_classes: int = 10, in_channels: int = 1, last_channels: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 16, 3, 1)]
        cin = 16
        for kernel, hidden, cout, se, act, stride in self.SETTING:
            layers.append(InvertedResidualV3(cin, hidden, cout, kernel, stride, se, act))
            cin = cout
        layers.append(_conv_bn(cin, 6 * cin, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, last_channels), nn.Hardswish(), nn.Linear(last_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3_small(num_classes: int = 10, in_channels: int = 1) -> MobileNetV3Small:
    return MobileNetV3Small(num_classes, in_channels)
