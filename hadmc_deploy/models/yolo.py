"""A compact YOLOv8-style detector: C2f backbone, SPPF, PAN neck, three anchor-free heads.

Written the Ultralytics way (Conv = conv+BN+SiLU; C2f splits its first conv's output in
two with `chunk`, runs a loop of bottlenecks on the last piece and concatenates every
piece) so that the pipeline meets the Python real detectors are made of. `traceable=True`
swaps only the C2f forward for explicit `split` indexing and an unrolled list, which
today's torch.fx tracer follows; the weights are the same, so one checkpoint loads into
either form.

Regression is plain ltrb (4 channels per anchor point: distances to the box sides in
stride units, through softplus when decoded) rather than YOLOv8's DFL (4 x 16 bins):
at this size DFL would make the box head 16x wider than the class head, and the decoder
stays a one-liner in numpy. Decoding and NMS live outside the model
(`hadmc_deploy.detection.decode`).

Output: a tuple of three raw maps, strides 8, 16, 32 in that order, each
[N, 4 + num_classes, H/stride, W/stride]: channels 0-3 are the ltrb logits, the rest
the class logits (sigmoid when decoded). No reshape or concat across levels happens in
the model, so every output keeps a plain conv layout and exports with a dynamic batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STRIDES = (8, 16, 32)
BASE_WIDTHS = (64, 128, 256, 512, 1024)  # YOLOv8's, scaled by `width`
BASE_DEPTHS = (3, 6, 6, 3)  # bottlenecks per C2f in the backbone, scaled by `depth`
CLASS_PRIOR = 0.01  # initial class probability, as in RetinaNet/YOLOv8: stable early training


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions (YOLOv8)."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, traceable: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = Conv(c_in, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))
        self.traceable = traceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.traceable:
            return self._forward_split(x)
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        # Same computation; `split` indexed explicitly and the list grown by index,
        # because torch.fx cannot iterate the Proxy that `chunk` returns.
        parts = self.cv1(x).split((self.c, self.c), 1)
        y = [parts[0], parts[1]]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = Conv(c_in, hidden, 1)
        self.cv2 = Conv(hidden * 4, c_out, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.cv2(torch.cat((x, y1, y2, self.pool(y2)), 1))


class DetectHead(nn.Module):
    """Decoupled box / class branches per level (YOLOv8's Detect, ltrb instead of DFL)."""

    def __init__(self, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.num_classes = num_classes
        c_box = max(16, channels[0] // 4)
        c_cls = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(nn.Sequential(Conv(c, c_box, 3), Conv(c_box, c_box, 3), nn.Conv2d(c_box, 4, 1)) for c in channels)
        self.cls = nn.ModuleList(nn.Sequential(Conv(c, c_cls, 3), Conv(c_cls, c_cls, 3), nn.Conv2d(c_cls, num_classes, 1)) for c in channels)
        for branch in self.box:
            nn.init.constant_(branch[-1].bias, math.log(math.e - 1.0))  # softplus(b) = 1 stride per side
        for branch in self.cls:
            nn.init.constant_(branch[-1].bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat((box(f), cls(f)), 1) for f, box, cls in zip(feats, self.box, self.cls, strict=True))


class YOLO(nn.Module):
    """Backbone (stride 32) + SPPF + PAN neck + three heads; see the module docstring for the output."""

    def __init__(self, num_classes: int = 6, in_channels: int = 3, width: float = 0.25, depth: float = 0.33, max_channels: int = 1024, traceable: bool = False) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width <= 0 or depth <= 0:
            raise ValueError(f"num_classes/in_channels must be >= 1 and width/depth > 0 (got {num_classes}, {in_channels}, {width}, {depth})")
        w = [max(8, int(round(min(c, max_channels) * width / 8)) * 8) for c in BASE_WIDTHS]
        d = [max(1, round(n * depth)) for n in BASE_DEPTHS]
        self.num_classes = num_classes
        self.strides = STRIDES

        def c2f(c_in: int, c_out: int, n: int, shortcut: bool) -> C2f:
            return C2f(c_in, c_out, n, shortcut, traceable)

        # backbone
        self.stem = Conv(in_channels, w[0], 3, 2)  # /2
        self.stage1 = nn.Sequential(Conv(w[0], w[1], 3, 2), c2f(w[1], w[1], d[0], True))  # /4
        self.stage2 = nn.Sequential(Conv(w[1], w[2], 3, 2), c2f(w[2], w[2], d[1], True))  # /8  -> P3
        self.stage3 = nn.Sequential(Conv(w[2], w[3], 3, 2), c2f(w[3], w[3], d[2], True))  # /16 -> P4
        self.stage4 = nn.Sequential(Conv(w[3], w[4], 3, 2), c2f(w[4], w[4], d[3], True), SPPF(w[4], w[4]))  # /32 -> P5
        # PAN neck: top-down then bottom-up
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        n_neck = d[0]
        self.td4 = c2f(w[4] + w[3], w[3], n_neck, False)
        self.td3 = c2f(w[3] + w[2], w[2], n_neck, False)
        self.down3 = Conv(w[2], w[2], 3, 2)
        self.bu4 = c2f(w[2] + w[3], w[3], n_neck, False)
        self.down4 = Conv(w[3], w[3], 3, 2)
        self.bu5 = c2f(w[3] + w[4], w[4], n_neck, False)
        self.head = DetectHead(num_classes, (w[2], w[3], w[4]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        p5 = self.stage4(p4)
        t4 = self.td4(torch.cat((self.up(p5), p4), 1))
        n3 = self.td3(torch.cat((self.up(t4), p3), 1))
        n4 = self.bu4(torch.cat((self.down3(n3), t4), 1))
        n5 = self.bu5(torch.cat((self.down4(n4), p5), 1))
        return self.head([n3, n4, n5])


def yolo_tiny(num_classes: int = 6, in_channels: int = 1, traceable: bool = False) -> YOLO:
    """The demo detector (widths 8-128, one bottleneck per C2f): trains on two CPU cores in minutes."""
    return YOLO(num_classes, in_channels, width=0.125, depth=0.33, traceable=traceable)


def yolo_tiny_split(num_classes: int = 6, in_channels: int = 1) -> YOLO:
    """`yolo_tiny` with C2f written with `split` indexing (traceable by torch.fx); same weights."""
    return yolo_tiny(num_classes, in_channels, traceable=True)


def yolo_n(num_classes: int = 80, in_channels: int = 3, traceable: bool = False) -> YOLO:
    """YOLOv8n's widths and depths (16-256 channels)."""
    return YOLO(num_classes, in_channels, width=0.25, depth=0.33, traceable=traceable)


def yolo_n_split(num_classes: int = 80, in_channels: int = 3) -> YOLO:
    return yolo_n(num_classes, in_channels, traceable=True)
