"""Property tests: random CNNs built from the blocks the graph knows, zero-then-prune must be exact."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hadmc_deploy.graph.check import prune_equivalence

torch.set_num_threads(1)

BLOCKS = ("conv", "residual", "dw", "gconv", "concat", "se", "shuffle", "gn", "in", "prelu", "pool", "upsample")


class Block(nn.Module):
    def __init__(self, kind: str, cin: int, width: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.cout = width
        elif kind == "residual":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 1), nn.BatchNorm2d(width), nn.SiLU(), nn.Conv2d(width, cin, 3, padding=1), nn.BatchNorm2d(cin))
            self.cout = cin
        elif kind == "dw":
            self.f = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.BatchNorm2d(cin), nn.Hardswish())
            self.cout = cin
        elif kind == "gconv":
            g = 2
            c = cin * 2
            self.f = nn.Sequential(nn.Conv2d(cin, c, 1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, groups=g), nn.BatchNorm2d(c), nn.ReLU())
            self.cout = c
        elif kind == "concat":
            self.a = nn.Conv2d(cin, width, 1)
            self.b = nn.Sequential(nn.Conv2d(cin, width // 2 + 1, 3, padding=1), nn.ReLU6())
            self.cout = width + width // 2 + 1
        elif kind == "se":
            self.fc1, self.fc2 = nn.Conv2d(cin, 3, 1), nn.Conv2d(3, cin, 1)
            self.cout = cin
        elif kind == "shuffle":
            self.f = nn.Sequential(nn.Conv2d(cin, 2 * width, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
            self.g = nn.Conv2d(width, width, 3, padding=1)
            self.cout = 2 * width
        elif kind == "gn":
            self.f = nn.Sequential(nn.Conv2d(cin, 2 * width, 1), nn.GroupNorm(2, 2 * width), nn.ReLU())
            self.cout = 2 * width
        elif kind == "in":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU())
            self.cout = width
        elif kind == "prelu":
            self.f = nn.Sequential(nn.Conv2d(cin, width, 1), nn.PReLU(width))
            self.cout = width
        elif kind == "pool":
            self.f = nn.MaxPool2d(2, 2)
            self.cout = cin
        else:
            self.f = nn.Sequential(nn.ConvTranspose2d(cin, width, 2, 2), nn.ReLU(), nn.AvgPool2d(2))
            self.cout = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "residual":
            return torch.relu(x + self.f(x))
        if k == "concat":
            return torch.cat([self.a(x), self.b(x)], dim=1)
        if k == "se":
            s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
            return x * s
        if k == "shuffle":
            y = self.f(x)
            a, b = y.chunk(2, dim=1)
            y = torch.cat([a, torch.relu(self.g(b))], 1)
            n, c, h, w = y.size()
            return y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.f(x)


class RandomNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int], head: str) -> None:
        super().__init__()
        c, h = 3, 8
        blocks = []
        for kind, w in zip(kinds, widths, strict=True):
            if kind == "pool" and h < 4:
                kind = "conv"
            h = h // 2 if kind == "pool" else h
            blocks.append(Block(kind, c, w))
            c = blocks[-1].cout
        self.blocks = nn.Sequential(*blocks)
        self.head = head
        self.fc = nn.Linear(c * (16 if head == "flatten" else 1), 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        if self.head == "flatten":
            y = nn.functional.adaptive_avg_pool2d(y, 4)
            return self.fc(torch.flatten(y, 1))
        return self.fc(y.mean((2, 3)))


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            n = m.weight.shape[0]
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kinds=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    widths=st.lists(st.integers(4, 12), min_size=5, max_size=5),
    head=st.sampled_from(("pool", "flatten")),
    ratio=st.sampled_from((0.25, 0.5, 0.7)),
    seed=st.integers(0, 2**16),
)
def test_random_cnns_zero_then_prune(kinds: list[str], widths: list[int], head: str, ratio: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = _randomize(RandomNet(kinds, [w * 2 for w in widths[: len(kinds)]], head), seed)
    shape = (2, 3, 8, 8)
    res = prune_equivalence(model, shape, ratio, seed=seed)
    assert res.max_abs_diff < 1e-5
    if res.pruned_groups:
        params = sum(p.numel() for p in res.pruned.parameters())
        assert params < sum(p.numel() for p in model.parameters())
