"""Architectures written the way real projects write them, for the channel graph's tests and matrix.

- `ONet`: facenet-pytorch's MTCNN O-Net layout (PReLU, ceil-mode max-pools, a
  channel-last `permute(0, 3, 2, 1).contiguous().view(n, -1)` flatten into
  `Linear(1152, 256)`, three heads returned as a tuple).
- `C2f`: Ultralytics' C2f block verbatim in structure
  (`y = list(self.cv1(x).chunk(2, 1)); y.extend(m(y[-1]) for m in self.m)`),
  and `C2fNet`, a small backbone of them with a dict of outputs.
- `GhostCBAMNet`: GhostNet's module (a primary conv and a cheap depthwise conv on its output,
  concatenated) with CBAM attention (channel gate from average and max pooling through one shared
  MLP; spatial gate from the channel-wise mean and max) and a learned per-channel scale.
- `FactorisedNet`: Inception-v3's 1x7 / 7x1 factorised kernels beside a dilated branch, a depthwise
  conv with a channel multiplier of 2 whose output is `torch.split` in halves and summed.

Random init; no third-party code is imported.
"""

from __future__ import annotations

import torch
from torch import nn

from hadmc_deploy.models.zoo import _bn_random, _cba


class ONet(nn.Module):
    """MTCNN O-Net (48x48 input): class scores (softmax), box offsets, five landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.softmax6_1 = nn.Softmax(dim=1)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        a = self.softmax6_1(self.dense6_1(x))
        b = self.dense6_2(x)
        c = self.dense6_3(x)
        return b, c, a


def onet() -> nn.Module:
    model = ONet()
    g = torch.Generator().manual_seed(4)
    for m in model.modules():
        if isinstance(m, nn.PReLU):  # distinct slopes per channel, so a wrong slice shows
            m.weight.data.copy_(torch.rand(m.num_parameters, generator=g) * 0.5)
    return model.eval()


class Conv(nn.Module):
    """Ultralytics' Conv: conv, BN, SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 3)
        self.cv2 = Conv(c_, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP bottleneck with two convolutions (Ultralytics), same forward as upstream."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C2fNet(nn.Module):
    """A small C2f backbone; returns a dict of two feature maps and the pooled logits."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = Conv(3, w, 3, 2)
        self.stage1 = nn.Sequential(Conv(w, 2 * w, 3, 2), C2f(2 * w, 2 * w, n=2, shortcut=True))
        self.stage2 = nn.Sequential(Conv(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, n=1))
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        (x,) = inputs
        p3 = self.stage1(self.stem(x))
        p4 = self.stage2(p3)
        return {"p3": p3, "p4": p4, "logits": self.head(p4.mean((2, 3)))}


def c2f_net(num_classes: int = 10) -> nn.Module:
    return _bn_random(C2fNet(num_classes))


class Ghost(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.primary = _cba(cin, half, 1)
        self.cheap = _cba(half, cout - half, 3, groups=half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], dim=1)


class CBAM(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, max(4, c // 8), 1), nn.ReLU(), nn.Conv2d(max(4, c // 8), c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.sigmoid(self.mlp(nn.functional.adaptive_avg_pool2d(x, 1)) + self.mlp(nn.functional.adaptive_max_pool2d(x, 1)))
        return x * torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)))


class GhostCBAMNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cba(3, 32, 3, 2)
        self.g1, self.att = Ghost(32, 64), CBAM(64)
        self.down, self.g2 = _cba(64, 96, 3, 2), Ghost(96, 128)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 128).view(1, 128, 1, 1))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.g2(self.down(self.att(self.g1(self.stem(x))))) * self.scale
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class FactorisedNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _cba(3, 32, 3, 2)
        self.b1 = nn.Sequential(_cba(32, 24, 1), _cba(24, 24, (1, 7)), _cba(24, 32, (7, 1)))
        self.b2 = _cba(32, 32, 3, dilation=2)
        self.dw2 = _cba(64, 128, 3, 2, groups=64)  # channel multiplier 2
        self.pw = _cba(64, 96, 1)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        a, b = torch.split(self.dw2(torch.cat([self.b1(x), self.b2(x)], 1)), 64, dim=1)
        return self.fc(self.pw(a + b).mean((2, 3)))


def ghost_cbam_net(num_classes: int = 10) -> nn.Module:
    return _bn_random(GhostCBAMNet(num_classes))


def factorised_net(num_classes: int = 10) -> nn.Module:
    return _bn_random(FactorisedNet(num_classes))
