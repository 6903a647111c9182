"""CNN architectures no test or validation of this repository was developed on, for
`tools/closed_loop_matrix.py --archs unseen`: each carries a construct users' models have and ours lack
(dense concatenation, inception branches, a flatten into an MLP head, channel shuffles,
squeeze-excite through Linear layers, a conv applied twice, Mish, ConvNeXt blocks with
channels-last MLPs and layer scale, a bare F.conv2d, Ghost modules' channel slice, CSP halves,
Res2Net's fixed-size split, HRNet's two-resolution exchange; then CBAM attention, GroupNorm and
InstanceNorm, a 1-D CNN, ASPP's dilated branches, MobileNetV3 blocks with a depth multiplier, PReLU
without BatchNorm, a U-Net decoder, learned scales and in-place sums, a non-local block, an
auxiliary head run only in training, SSD's L2Norm, stochastic depth, CoordConv; then SKNet's
stacked branches, reflect and circular padding, strip pooling with tensor_split, space-to-depth by
view and permute).
All take 1x28x28 inputs and give 10 classes (Fashion-MNIST)."""

import torch
import torch.nn.functional as F
from torch import nn


def cbr(i, o, k=3, s=1, g=1, d=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, d * (k // 2), dilation=d, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class DenseCat(nn.Module):
    """DenseNet-style: every layer sees the concat of all earlier ones."""
    def __init__(self, g=12):
        super().__init__()
        self.stem = cbr(1, 24)
        self.l1, self.l2, self.l3 = cbr(24, g), cbr(24 + g, g), cbr(24 + 2 * g, g)
        self.trans = nn.Sequential(nn.Conv2d(24 + 3 * g, 48, 1), nn.AvgPool2d(2))
        self.m1, self.m2 = cbr(48, g), cbr(48 + g, g)
        self.head = nn.Linear(48 + 2 * g, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        x = torch.cat([x, self.l3(x)], 1)
        x = self.trans(x)
        x = torch.cat([x, self.m1(x)], 1)
        x = torch.cat([x, self.m2(x)], 1)
        return self.head(x.mean((2, 3)))


class Incept(nn.Module):
    """Inception-style branches of different kernels, concatenated."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.b1 = cbr(32, 16, k=1)
        self.b3 = nn.Sequential(cbr(32, 16, k=1), cbr(16, 24))
        self.b5 = nn.Sequential(cbr(32, 8, k=1), cbr(8, 12), cbr(12, 12))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), cbr(32, 12, k=1))
        self.post = cbr(64, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)
        x = self.post(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class VGGMLP(nn.Module):
    """VGG with a flatten into an MLP head: the last conv's channels couple to Linear blocks of 7x7."""
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(cbr(1, 32), cbr(32, 32), nn.MaxPool2d(2), cbr(32, 64), cbr(64, 48), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(48 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class Shuffle(nn.Module):
    """ShuffleNetV2-style: split, branch, concat, channel shuffle."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.branch = nn.Sequential(cbr(16, 16, k=1), nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), cbr(16, 16, k=1))
        self.branch2 = nn.Sequential(cbr(16, 16, k=1), nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), cbr(16, 16, k=1))
        self.post = cbr(32, 64, s=2)
        self.fc = nn.Linear(64, 10)

    @staticmethod
    def shuffle(x, groups=2):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch(b)], 1))
        a, b = x.chunk(2, dim=1)
        x = self.shuffle(torch.cat([a, self.branch2(b)], 1))
        return self.fc(self.post(x).mean((2, 3)))


class SELinear(nn.Module):
    """Squeeze-excite through Linear layers (not 1x1 convs), GELU activations."""
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.GELU())
        self.c2 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.GELU())
        self.se1, self.se2 = nn.Linear(64, 16), nn.Linear(16, 64)
        self.c3 = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.GELU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c2(self.c1(x))
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        x = x * s[:, :, None, None]
        return self.fc(self.c3(x).mean((2, 3)))


class SharedConv(nn.Module):
    """One conv applied twice (weights shared): pruning it must keep both uses consistent."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32)
        self.shared = nn.Conv2d(32, 32, 3, 1, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
        self.down = cbr(32, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + F.relu(self.bn1(self.shared(x)))
        x = x + F.relu(self.bn2(self.shared(x)))
        return self.fc(F.adaptive_avg_pool2d(self.down(x), 1).flatten(1))


class MishRes(nn.Module):
    """Residual stages with Mish, a strided shortcut via avgpool + 1x1 conv, and a 2-layer head."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.Mish())
        self.a = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.Mish(), nn.Conv2d(24, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24))
        self.b = nn.Sequential(nn.Conv2d(24, 56, 3, 2, 1, bias=False), nn.BatchNorm2d(56), nn.Mish(), nn.Conv2d(56, 56, 3, 1, 1, bias=False), nn.BatchNorm2d(56))
        self.short = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(24, 56, 1, bias=False), nn.BatchNorm2d(56))
        self.head = nn.Sequential(nn.Linear(56, 40), nn.Mish(), nn.Linear(40, 10))

    def forward(self, x):
        x = self.stem(x)
        x = F.mish(x + self.a(x))
        x = F.mish(self.short(x) + self.b(x))
        return self.head(x.mean((2, 3)))


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm."""
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class CNBlock(nn.Module):
    """ConvNeXt block: dw7x7, channels-last LayerNorm, Linear 4x, GELU, Linear, layer scale."""
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.act, self.pw2 = nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(1e-1 * torch.ones(c))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(self.act(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 2, 2), LayerNorm2d(32))
        self.s1 = nn.Sequential(CNBlock(32), CNBlock(32))
        self.down = nn.Sequential(LayerNorm2d(32), nn.Conv2d(32, 64, 2, 2))
        self.s2 = nn.Sequential(CNBlock(64), CNBlock(64))
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.s2(self.down(self.s1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class FuncConv(nn.Module):
    """A conv whose weight is a bare Parameter used through F.conv2d, between module convs."""
    def __init__(self):
        super().__init__()
        self.c1 = cbr(1, 32)
        self.w = nn.Parameter(torch.randn(48, 32, 3, 3) * 0.05)
        self.bn = nn.BatchNorm2d(48)
        self.c3 = cbr(48, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c1(x)
        x = F.relu(self.bn(F.conv2d(x, self.w, padding=1, stride=2)))
        return self.fc(self.c3(x).mean((2, 3)))


class Ghost(nn.Module):
    """GhostNet module: a primary conv, cheap depthwise features, concat, then a channel slice [:, :oup]."""
    def __init__(self, inp, oup, ratio=2):
        super().__init__()
        self.oup = oup
        init = -(-oup // ratio)
        self.primary = nn.Sequential(nn.Conv2d(inp, init, 1, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True))
        self.cheap = nn.Sequential(nn.Conv2d(init, init * (ratio - 1), 3, 1, 1, groups=init, bias=False), nn.BatchNorm2d(init * (ratio - 1)), nn.ReLU(inplace=True))

    def forward(self, x):
        x1 = self.primary(x)
        return torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.oup]


class GhostNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 16, s=2)
        self.g1 = Ghost(16, 30)
        self.g2 = Ghost(30, 48)
        self.down = cbr(48, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.g2(self.g1(self.stem(x)))
        return self.fc(self.down(x).mean((2, 3)))


class CSPish(nn.Module):
    """CSPNet-style: half the channels by slicing go through blocks, then concat and a transition."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.part = nn.Sequential(cbr(16, 16), cbr(16, 16))
        self.trans = cbr(32, 48, k=1)
        self.down = cbr(48, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x[:, :16], x[:, 16:]
        x = self.trans(torch.cat([a, self.part(b) + b], 1))
        return self.fc(self.down(x).mean((2, 3)))


class Res2(nn.Module):
    """Res2Net block: split into 4 scales, hierarchical 3x3 convs, concat, 1x1."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.convs = nn.ModuleList([cbr(8, 8) for _ in range(3)])
        self.fuse = cbr(32, 32, k=1)
        self.down = cbr(32, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        xs = torch.split(x, 8, 1)
        ys = [xs[0]]
        prev = None
        for i, conv in enumerate(self.convs):
            prev = conv(xs[i + 1] if prev is None else xs[i + 1] + prev)
            ys.append(prev)
        x = x + self.fuse(torch.cat(ys, 1))
        return self.fc(self.down(x).mean((2, 3)))


class HRFuse(nn.Module):
    """HRNet-style: a high- and a low-resolution branch exchanging features (upsample + add, strided conv + add)."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 16)
        self.to_low = cbr(16, 32, s=2)
        self.hi, self.lo = cbr(16, 16), cbr(32, 32)
        self.lo2hi = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.hi2lo = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32))
        self.head = cbr(48, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        high = self.stem(x)
        low = self.to_low(high)
        high, low = self.hi(high), self.lo(low)
        high2 = F.relu(high + F.interpolate(self.lo2hi(low), scale_factor=2, mode="nearest"))
        low2 = F.relu(low + self.hi2lo(high))
        y = torch.cat([F.avg_pool2d(high2, 2), low2], 1)
        return self.fc(self.head(y).mean((2, 3)))


class CBAM(nn.Module):
    """CBAM: channel attention (shared 1x1-conv MLP over avg and max pools), spatial attention
    (a 7x7 conv over the channel mean and channel max)."""
    def __init__(self, c, r=4):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(c, c // r, 1), nn.ReLU(), nn.Conv2d(c // r, c, 1))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        x = x * torch.sigmoid(a)
        s = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
        return x * torch.sigmoid(self.spatial(s))


class CBAMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(cbr(1, 32), CBAM(32), cbr(32, 64, s=2), CBAM(64), cbr(64, 96, s=2))
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        return self.fc(self.f(x).mean((2, 3)))


class GNNet(nn.Module):
    """GroupNorm and InstanceNorm instead of BatchNorm; GELU; conv with bias."""
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 32, 3, padding=1), nn.GroupNorm(8, 32)
        self.c2, self.n2 = nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(16, 64)
        self.c3, self.n3 = nn.Conv2d(64, 64, 3, 2, 1), nn.InstanceNorm2d(64, affine=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.gelu(self.n1(self.c1(x)))
        x = F.gelu(self.n2(self.c2(x)))
        x = F.gelu(self.n3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Seq1D(nn.Module):
    """A 1-D CNN: each image row is a time step, its 28 pixels the channels (Conv1d, BatchNorm1d)."""
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv1d(28, 64, 5, padding=2, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 96, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(96), nn.ReLU(),
            nn.Conv1d(96, 96, 3, padding=1, bias=False), nn.BatchNorm1d(96), nn.ReLU())
        self.fc = nn.Linear(96, 10)

    def forward(self, x):
        x = x.squeeze(1).transpose(1, 2)  # (N, 28 columns as channels, 28 rows as time)
        return self.fc(self.f(x).mean(2))


class ASPPNet(nn.Module):
    """DeepLab's ASPP: dilated 3x3 convs at several rates and an image-pool branch, concatenated."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbr(1, 32), cbr(32, 48, s=2))
        self.r1, self.r2, self.r4 = cbr(48, 24, k=1), cbr(48, 24, d=2), cbr(48, 24, d=4)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(48, 24, 1), nn.ReLU())
        self.proj = cbr(96, 64, k=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        p = F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.proj(torch.cat([self.r1(x), self.r2(x), self.r4(x), p], 1))
        return self.fc(x.mean((2, 3)))


class MBV3ish(nn.Module):
    """MobileNetV3 blocks: hardswish, SE by 1x1 convs with hardsigmoid, depthwise with a channel multiplier of 2."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 32, 1), nn.Hardsigmoid())
        self.pw = nn.Sequential(nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.expand = nn.Sequential(nn.Conv2d(48, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(),
                                    nn.Conv2d(96, 96, 3, 2, 1, groups=96, bias=False), nn.BatchNorm2d(96), nn.Hardswish())
        self.head = nn.Sequential(nn.Conv2d(96, 128, 1), nn.Hardswish(), nn.Dropout(0.2))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        x = self.dw(self.stem(x))
        x = self.pw(x * self.se(x))
        x = self.expand(x)
        x = self.head(F.adaptive_avg_pool2d(x, 1))
        return self.fc(torch.flatten(x, 1))


class PReLUNet(nn.Module):
    """No BatchNorm: biased convs, PReLU with one slope per channel, Dropout2d, a max pool head, BatchNorm1d in an MLP head."""
    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(1, 32, 3, padding=1), nn.PReLU(32)
        self.c2, self.a2 = nn.Conv2d(32, 64, 3, 2, 1), nn.PReLU(64)
        self.c3, self.a3 = nn.Conv2d(64, 64, 3, 2, 1), nn.LeakyReLU(0.1)
        self.drop = nn.Dropout2d(0.1)
        self.mlp = nn.Sequential(nn.Linear(64, 48), nn.BatchNorm1d(48), nn.ReLU(), nn.Linear(48, 10))

    def forward(self, x):
        x = self.a1(self.c1(x))
        x = self.drop(self.a2(self.c2(x)))
        x = self.a3(self.c3(x))
        return self.mlp(torch.flatten(F.adaptive_max_pool2d(x, 1), 1))


class UNetCls(nn.Module):
    """A small U-Net (ConvTranspose2d up, nearest Upsample up, skip concatenation) with a classifier on the decoder."""
    def __init__(self):
        super().__init__()
        self.e1, self.e2, self.e3 = cbr(1, 16), cbr(16, 32, s=2), cbr(32, 64, s=2)
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.d2 = cbr(64, 32)
        self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.d1 = cbr(48, 24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        d = self.d2(torch.cat([self.up2(c), b], 1))
        e = self.d1(torch.cat([self.up1(d), a], 1))
        return self.fc(e.mean((2, 3)))


class ScaleRes(nn.Module):
    """Residual blocks summed by torch.add with alpha and in place (+=), a learned per-channel scale
    and shift as Parameters of shape (1, C, 1, 1), global pooling written as view + mean."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32)
        self.b1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.gamma = nn.Parameter(torch.full((1, 32, 1, 1), 0.5))
        self.beta = nn.Parameter(torch.zeros(1, 32, 1, 1))
        self.down = cbr(32, 64, s=2)
        self.b2 = nn.Sequential(cbr(64, 64), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.add(x, self.b1(x) * self.gamma + self.beta, alpha=0.5).relu()
        x = self.down(x)
        y = self.b2(x)
        y += x
        y = F.relu(y)
        return self.fc(y.view(y.size(0), y.size(1), -1).mean(-1))


class NonLocal(nn.Module):
    """A non-local (self-attention) block: theta/phi/g 1x1 convs, matmuls over positions, softmax, W back."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(cbr(1, 32), cbr(32, 48, s=2))
        self.theta, self.phi, self.g = nn.Conv2d(48, 24, 1), nn.Conv2d(48, 24, 1), nn.Conv2d(48, 24, 1)
        self.w = nn.Sequential(nn.Conv2d(24, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.post = cbr(48, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        n, _, h, w = x.shape
        t = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C')
        p = self.phi(x).flatten(2)  # (N, C', HW)
        g = self.g(x).flatten(2).transpose(1, 2)
        a = torch.softmax(torch.matmul(t, p), dim=-1)  # (N, HW, HW)
        y = torch.matmul(a, g).transpose(1, 2).reshape(n, -1, h, w)
        x = x + self.w(y)
        return self.fc(self.post(x).mean((2, 3)))


class AuxHead(nn.Module):
    """GoogLeNet-style auxiliary classifier: in training forward returns (main, aux), in eval main only."""
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(cbr(1, 32), cbr(32, 48, s=2))
        self.b = nn.Sequential(cbr(48, 64, s=2), cbr(64, 64))
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(48 * 4, 10))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.a(x)
        out = self.fc(self.b(x).mean((2, 3)))
        if self.training:
            return out, self.aux(x)
        return out


class L2NormNet(nn.Module):
    """SSD's L2Norm on an early feature map (x / sqrt(sum of squares over channels) * per-channel weight)."""
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(cbr(1, 32), cbr(32, 48, s=2))
        self.scale = nn.Parameter(torch.full((48,), 10.0))
        self.b = nn.Sequential(cbr(48, 64, s=2), cbr(64, 64))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.a(x)
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
        x = self.scale.view(1, -1, 1, 1) * torch.div(x, norm)
        return self.fc(self.b(x).mean((2, 3)))


class DropPathRes(nn.Module):
    """Residual blocks with stochastic depth (a per-sample Bernoulli mask in training, from x.new_empty)."""
    def __init__(self, p=0.2):
        super().__init__()
        self.p = p
        self.stem = cbr(1, 32)
        self.b1 = nn.Sequential(cbr(32, 32), nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.down = cbr(32, 64, s=2)
        self.b2 = nn.Sequential(cbr(64, 64), nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 10)

    def drop_path(self, y):
        if not self.training or self.p == 0.0:
            return y
        keep = y.new_empty((y.shape[0],) + (1,) * (y.ndim - 1)).bernoulli_(1 - self.p)
        return y * keep / (1 - self.p)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.drop_path(self.b1(x)))
        x = self.down(x)
        x = F.relu(x + self.drop_path(self.b2(x)))
        return self.fc(x.mean((2, 3)))


class CoordConv(nn.Module):
    """CoordConv: two coordinate channels (linspace, expanded to the batch) concatenated before a conv."""
    def __init__(self):
        super().__init__()
        self.a = cbr(1, 32, s=2)
        self.b = cbr(34, 64, s=2)
        self.c = cbr(64, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.a(x)
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        x = self.b(torch.cat([x, ys, xs], 1))
        return self.fc(self.c(x).mean((2, 3)))


class SK(nn.Module):
    """Selective kernel: 3x3 and dilated 3x3 branches, stacked, a softmax over the branch axis."""
    def __init__(self, c, r=4):
        super().__init__()
        self.b1, self.b2 = cbr(c, c), cbr(c, c, d=2)
        self.fc = nn.Sequential(nn.Linear(c, c // r), nn.ReLU(), nn.Linear(c // r, 2 * c))

    def forward(self, x):
        feats = torch.stack([self.b1(x), self.b2(x)], dim=1)  # (N, 2, C, H, W)
        s = feats.sum(dim=1).mean((2, 3))
        a = self.fc(s).view(x.size(0), 2, -1, 1, 1).softmax(dim=1)
        return (feats * a).sum(dim=1)


class SKNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.sk = SK(32)
        self.post = cbr(32, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.post(self.sk(self.stem(x))).mean((2, 3)))


class ReflectNet(nn.Module):
    """Reflect and circular padding (padding_mode and F.pad), input normalisation by buffers,
    pooling with a kernel read from the shape."""
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5]).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor([0.5]).view(1, 1, 1, 1))
        self.c1 = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, padding_mode="reflect", bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, padding_mode="circular", bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.c1((x - self.mean) / self.std)
        x = self.c2(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        x = self.c3(x)
        return self.fc(F.avg_pool2d(x, x.shape[2:]).flatten(1))


class StripPool(nn.Module):
    """Strip pooling (pool over height only and width only, broadcast back), unbind, tensor_split."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32)
        self.h = nn.Sequential(nn.AdaptiveAvgPool2d((None, 1)), nn.Conv2d(32, 32, (3, 1), padding=(1, 0)))
        self.w = nn.Sequential(nn.AdaptiveAvgPool2d((1, None)), nn.Conv2d(32, 32, (1, 3), padding=(0, 1)))
        self.post = cbr(32, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x * torch.sigmoid(self.h(x) + self.w(x))
        x = self.post(x)
        a, b = torch.tensor_split(x, 2, dim=1)
        return self.fc(torch.cat([a, b], 1).mean((2, 3)))


class SpaceToDepth(nn.Module):
    """Space-to-depth by view/permute (YOLOv5's Focus without slicing), then depth-to-space back."""
    def __init__(self):
        super().__init__()
        self.stem = cbr(4, 32)
        self.mid = cbr(32, 64, s=2)
        self.up = nn.Conv2d(64, 64 * 4, 1)
        self.post = cbr(64, 64, s=2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)
        x = self.mid(self.stem(x))
        y = self.up(x)
        n, c4, h, w = y.shape
        y = y.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, h * 2, w * 2)
        return self.fc(self.post(y).mean((2, 3)))
