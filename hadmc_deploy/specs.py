"""`LayerSpec`: the small, stable interface between the graph and the latency model.

The graph describes every costed node of a model as a `LayerSpec`; the latency
model (LUT, analytic) and the backends' `measure_layer` only ever see specs, so
each side can change without the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

#: op kinds a spec may have. Convs are split by their grouping because their
#: kernels (and so their latency curves) differ on every backend.
OPS = (
    "conv",  # groups == 1
    "dwconv",  # groups == in == out
    "gconv",  # 1 < groups < in
    "convtranspose",
    "linear",
    "maxpool",
    "avgpool",
    "globalpool",
    "add",
    "mul",
    "concat",
    "act",
    "upsample",
    "norm",
)
PRECISIONS = ("fp32", "fp16", "int8")


def round_up(count: int, step: int) -> int:
    """`count` channels rounded up to a multiple of `step` (what a blocked kernel that pads
    computes); `count` itself for a step of 1 or less."""
    return int(-(-count // step) * step) if step > 1 else count


@dataclass(frozen=True)
class LayerSpec:
    op: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    batch: int = 1
    precision: str = "fp32"
    bias: bool = True
    #: the elementwise op fused after this one in deployment ("relu", "silu", ...),
    #: measured with it because backends fuse it into the kernel.
    activation: str | None = None
    #: number of inputs for add/mul/concat; per-input channels for concat live in `extra`.
    n_inputs: int = 1
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown op kind {self.op!r}; expected one of {', '.join(OPS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}")
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"channel counts must be positive, got {self.in_channels}->{self.out_channels}")

    # -- identity -----------------------------------------------------------------
    def key(self) -> str:
        """A canonical string that names this spec in a LUT."""
        parts = [
            self.op,
            f"c{self.in_channels}-{self.out_channels}",
            f"k{self.kernel[0]}x{self.kernel[1]}",
            f"s{self.stride[0]}x{self.stride[1]}",
            f"p{self.padding[0]}x{self.padding[1]}",
            f"d{self.dilation[0]}x{self.dilation[1]}",
            f"g{self.groups}",
            f"hw{self.in_hw[0]}x{self.in_hw[1]}",
            f"b{self.batch}",
            self.precision,
            f"bias{int(self.bias)}",
            f"act-{self.activation or 'none'}",
            f"n{self.n_inputs}",
        ]
        parts += [f"{k}={v}" for k, v in self.extra]
        return "|".join(parts)

    def shape_key(self) -> str:
        """The key without channel counts: specs sharing it form one interpolation family."""
        groups = self.groups if self.op == "gconv" else 1
        return replace(self, in_channels=1, out_channels=1, groups=groups).key()

    # -- derived ------------------------------------------------------------------
    def with_channels(self, in_channels: int, out_channels: int) -> LayerSpec:
        """The same layer at other widths; depthwise convs keep groups == channels."""
        groups = self.groups
        if self.op == "dwconv":
            groups = in_channels
            out_channels = in_channels * (self.out_channels // max(self.in_channels, 1))
        return replace(self, in_channels=in_channels, out_channels=out_channels, groups=groups)

    def rows_per_sample(self) -> int:
        """Rows a linear layer multiplies per sample: 1 for (N, C) inputs, H*W for a channels-last
        (N, H, W, C) input (a ConvNeXt block's pointwise MLP), recorded in `extra` by the graph."""
        return int(dict(self.extra).get("rows_per_sample", 1))

    def macs(self) -> int:
        """Multiply-accumulates for one forward pass of the whole batch."""
        oh, ow = self.out_hw
        if self.op in ("conv", "dwconv", "gconv", "convtranspose"):
            kh, kw = self.kernel
            per_out = (self.in_channels // max(self.groups, 1)) * kh * kw
            hw = oh * ow if self.op != "convtranspose" else self.in_hw[0] * self.in_hw[1]
            return self.batch * self.out_channels * hw * per_out
        if self.op == "linear":
            return self.batch * self.rows_per_sample() * self.in_channels * self.out_channels
        return 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["extra"] = [list(item) for item in self.extra]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        fields = dict(data)
        for name in ("kernel", "stride", "padding", "dilation", "in_hw", "out_hw"):
            if name in fields:
                fields[name] = tuple(fields[name])
        fields["extra"] = tuple(tuple(item) for item in fields.get("extra", ()))
        return cls(**fields)
