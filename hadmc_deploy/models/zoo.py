"""The pruning architecture matrix: torchvision-style definitions, random init, no torchvision.

(One module for the whole matrix, over the usual size: each builder is short and they are
read side by side; tools/prune_matrix.py and the tests import them from here.)

Each builder follows the torchvision structure that matters to a channel graph
(residual adds, SE, depthwise and grouped convs, split + shuffle, dense concat,
flatten -> Linear, channels-last LayerNorm with layer scale, multi-branch
concat). Some are shallower than the originals to keep the tests fast; the
block structure is the same. `MATRIX` maps name -> (builder, small input shape,
full input shape).

Long because it is a catalogue: a dozen small reference architectures the matrix and tests
share; each definition stands alone.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from hadmc_deploy.models.mobilenet import _make_divisible, mobilenet_v2
from hadmc_deploy.models.resnet import resnet18, resnet50


def _cba(cin: int, cout: int, k: int | tuple[int, int] = 3, s: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU,
         dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding for odd kernels, square or (kh, kw), dilated or not), BatchNorm, activation."""
    pad = ((k - 1) // 2) * dilation if isinstance(k, int) else tuple(((kk - 1) // 2) * dilation for kk in k)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, pad, dilation=dilation, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU) else act())
    return nn.Sequential(*layers)


def _bn_random(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters, so norms are not identities in the checks."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth ("row" mode): identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty([x.shape[0]] + [1] * (x.dim() - 1), device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class SqueezeExcitation(nn.Module):
    def __init__(self, cin: int, squeeze: int, act: type[nn.Module] = nn.ReLU, scale_act: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(cin, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, cin, 1)
        self.activation = act()
        self.scale_activation = scale_act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        return s * x


# -- MobileNetV3 (small) -------------------------------------------------------------------------
class V3Block(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(_cba(cin, exp, 1, act=act))
        layers.append(_cba(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, _make_divisible(exp // 4), scale_act=nn.Hardsigmoid))
        layers.append(_cba(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res else out


def mobilenet_v3_small(num_classes: int = 1000) -> nn.Module:
    HS, RE = nn.Hardswish, nn.ReLU
    cfg = [(16, 3, 16, 16, True, RE, 2), (16, 3, 72, 24, False, RE, 2), (24, 3, 88, 24, False, RE, 1), (24, 5, 96, 40, True, HS, 2),
           (40, 5, 240, 40, True, HS, 1), (40, 5, 120, 48, True, HS, 1), (48, 5, 288, 96, True, HS, 2), (96, 5, 576, 96, True, HS, 1)]
    layers: list[nn.Module] = [_cba(3, 16, 3, 2, act=HS)]
    layers += [V3Block(*c) for c in cfg]
    layers.append(_cba(96, 576, 1, act=HS))
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                          nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, num_classes)))
    return _bn_random(model)


# -- EfficientNet-B0 -----------------------------------------------------------------------------
class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, sd_prob: float) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        exp = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_cba(cin, exp, 1, act=nn.SiLU))
        layers.append(_cba(exp, exp, k, stride, groups=exp, act=nn.SiLU))
        layers.append(SqueezeExcitation(exp, max(1, cin // 4), act=nn.SiLU))
        layers.append(_cba(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res:
            out = self.stochastic_depth(out) + x
        return out


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    cfg = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3),
           (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    total = sum(c[-1] for c in cfg)
    layers: list[nn.Module] = [_cba(3, 32, 3, 2, act=nn.SiLU)]
    idx = 0
    for expand, k, s, cin, cout, n in cfg:
        for i in range(n):
            layers.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, expand, 0.2 * idx / total))
            idx += 1
    layers.append(_cba(320, 1280, 1, act=nn.SiLU))
    model = nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2), nn.Linear(1280, num_classes))
    return _bn_random(model)


# -- ShuffleNetV2 (torchvision's channel_shuffle, verbatim in structure) ---------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(_cba(inp, inp, 3, stride, groups=inp, act=None), _cba(inp, branch, 1))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(_cba(inp if stride > 1 else branch, branch, 1), _cba(branch, branch, 3, stride, groups=branch, act=None), _cba(branch, branch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def shufflenet_v2_x1_0(num_classes: int = 1000, repeats: tuple[int, ...] = (4, 8, 4)) -> nn.Module:
    widths = [24, 116, 232, 464, 1024]
    layers: list[nn.Module] = [_cba(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for n, cout in zip(repeats, widths[1:4], strict=True):
        layers.append(nn.Sequential(ShuffleUnit(cin, cout, 2), *[ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]))
        cin = cout
    layers.append(_cba(cin, widths[-1], 1))
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(widths[-1], num_classes))
    return _bn_random(model)


class ShuffleCNN(nn.Module):
    """A small grouped CNN with one channel shuffle between its grouped convs: a small graph
    whose INT8 timing depends on how it is exported (tools/bench_timing_exports.py)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _cba(in_channels, 32, 3)
        self.g1 = _cba(32, 64, 1, groups=4)
        self.g2 = _cba(64, 64, 3, groups=4)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.g2(channel_shuffle(self.g1(self.stem(x)), 4)).mean((2, 3)))


# -- DenseNet ------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth) for i in range(n)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def densenet(num_classes: int = 1000, block_config: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, init: int = 64) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, init, 7, 2, 3, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    c = init
    for i, n in enumerate(block_config):
        layers.append(DenseBlock(n, c, growth))
        c += n * growth
        if i != len(block_config) - 1:
            layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes)]
    return _bn_random(nn.Sequential(*layers))


densenet121 = partial(densenet, block_config=(6, 12, 24, 16))
densenet_small = partial(densenet, block_config=(2, 3, 4, 2), growth=16, init=32)


# -- VGG-11 with BN (flatten -> Linear) ----------------------------------------------------------
def vgg11_bn(num_classes: int = 1000, hidden: int = 4096) -> nn.Module:
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    return _bn_random(nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(1),
                                    nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden),
                                    nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes)))


# -- RegNetX-200MF (grouped convs) ---------------------------------------------------------------
class ResBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int) -> None:
        super().__init__()
        self.proj = _cba(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.f = nn.Sequential(_cba(cin, cout, 1), _cba(cout, cout, 3, stride, groups=cout // group_width), _cba(cout, cout, 1, act=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(shortcut + self.f(x))


def regnet_x_200mf(num_classes: int = 1000) -> nn.Module:
    widths, depths, gw = (24, 56, 152, 368), (1, 1, 4, 7), 8
    layers: list[nn.Module] = [_cba(3, 32, 3, 2)]
    c = 32
    for w, d in zip(widths, depths, strict=True):
        layers.append(nn.Sequential(*[ResBottleneck(c if i == 0 else w, w, 2 if i == 0 else 1, gw) for i in range(d)]))
        c = w
    return _bn_random(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes)))


# -- ConvNeXt (channels-last LayerNorm after permute, layer scale) --------------------------------
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim: int, layer_scale: float, sd_prob: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = nn.Parameter(torch.ones(dim) * layer_scale + torch.rand(dim) * 0.1)
        self.stochastic_depth = StochasticDepth(sd_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.layer_scale * y).permute(0, 3, 1, 2)
        return x + self.stochastic_depth(y)


class ChannelsFirstLN(nn.Module):
    """LayerNorm2d as torchvision writes it: permute -> LayerNorm -> permute (an nn.LayerNorm leaf)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext_tiny(num_classes: int = 1000, depths: tuple[int, ...] = (1, 1, 3, 1), dims: tuple[int, ...] = (96, 192, 384, 768)) -> nn.Module:
    layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstLN(dims[0]))]
    total, idx = sum(depths), 0
    for i, (d, dim) in enumerate(zip(depths, dims, strict=True)):
        blocks = []
        for _ in range(d):
            blocks.append(CNBlock(dim, 0.5, 0.1 * idx / total))
            idx += 1
        layers.append(nn.Sequential(*blocks))
        if i + 1 < len(dims):
            layers.append(nn.Sequential(ChannelsFirstLN(dim), nn.Conv2d(dim, dims[i + 1], 2, 2)))
    head = nn.Sequential(ChannelsFirstLN(dims[-1]), nn.Flatten(1), nn.Linear(dims[-1], num_classes))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), head).eval()


# -- Inception-style multi-branch concat ----------------------------------------------------------
class InceptionBlock(nn.Module):
    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> None:
        super().__init__()
        self.branch1 = _cba(cin, c1, 1)
        self.branch2 = nn.Sequential(_cba(cin, c3r, 1), _cba(c3r, c3, 3))
        self.branch3 = nn.Sequential(_cba(cin, c5r, 1), _cba(c5r, c5, 3), _cba(c5, c5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _cba(cin, pool, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


def inception_small(num_classes: int = 1000) -> nn.Module:
    model = nn.Sequential(_cba(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1), _cba(64, 192, 3),
                          InceptionBlock(192, 64, 96, 128, 16, 32, 32), InceptionBlock(256, 128, 128, 192, 32, 96, 64),
                          nn.MaxPool2d(3, 2, 1), InceptionBlock(480, 192, 96, 208, 16, 48, 64),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(0.2), nn.Linear(512, num_classes))
    return _bn_random(model)


# -- extra op coverage: GroupNorm, PReLU, ConvTranspose2d, interpolate/upsample -------------------
class UNetish(nn.Module):
    """Encoder-decoder: GroupNorm, PReLU, ConvTranspose2d, F.interpolate, nn.Upsample and a skip concat."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.PReLU(32))
        self.enc2 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.GroupNorm(4, 64), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.PReLU())
        self.up1 = nn.ConvTranspose2d(64, 48, 2, 2)
        self.dec1 = nn.Sequential(nn.Conv2d(48 + 64, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU())
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2 = nn.Sequential(nn.Conv2d(48 + 32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU())
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d1 = self.dec1(torch.cat([self.up1(e3), e2], 1))
        d2 = self.dec2(torch.cat([self.up2(d1), e1], 1))
        out = self.head(d2)
        return F.interpolate(out, scale_factor=0.5, mode="bilinear", align_corners=False)


def unetish(num_classes: int = 5) -> nn.Module:
    model = UNetish(num_classes)
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.weight.data.copy_(torch.rand(m.num_channels, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_channels, generator=g) * 0.1)
    return _bn_random(model)


def resnet18_bn() -> nn.Module:
    return _bn_random(resnet18())


def resnet50_bn() -> nn.Module:
    return _bn_random(resnet50())


def mobilenet_v2_bn() -> nn.Module:
    model = mobilenet_v2()
    nn.init.normal_(model.classifier[1].weight, 0, 1 / 1280**0.5)
    return _bn_random(model)


vgg11_bn_small_head = partial(vgg11_bn, hidden=512)
