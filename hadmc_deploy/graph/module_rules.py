"""Channel rules for leaf modules (conv, linear, norms, PReLU, activations, pools).

Producers (conv, linear) start new atoms for their outputs and record which
weight slices consume their inputs; norms and per-channel parameters follow the
channels they see. Grouped convs keep the per-group counts equal (a balanced
partition), depthwise convs pass channels through, GroupNorm drops whole
groups (so the other groups' statistics do not move).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from hadmc_deploy.graph.calls import check_reuse, first_call, remember_call, shared_call
from hadmc_deploy.graph.labels import ChannelInfo, Partition
from hadmc_deploy.graph.rules import (
    Info,
    RuleContext,
    channel_shuffle,
    cross_channel_norm,
    padding,
    passthrough,
    pixel_shuffle,
    record_member,
    shape_op,
    softmax_like,
    spatial,
)

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.SELU,
)


def _input(ctx: RuleContext) -> tuple[Any, Info]:
    arg = ctx.node.args[0] if ctx.node.args else None
    return arg, ctx.info(arg)


def conv(ctx: RuleContext) -> Info:
    m: nn.Conv2d = ctx.module()
    name = ctx.module_name
    _, x = _input(ctx)
    cin, cout, groups = m.in_channels, m.out_channels, m.groups
    depthwise = groups > 1 and groups == cin
    kind = "conv" if groups == 1 else ("dwconv" if depthwise else "gconv")
    shareable = groups == 1 or (depthwise and cout == cin)  # one slicing can serve several calls
    if shareable and x is not None and x.axes == (1,):
        shared = shared_call(ctx, x.flat())
        if shared is not None:
            ctx.draft(kind, [x.flat()], shared)
            return ChannelInfo((1,), shared)
    reused = check_reuse(ctx)
    in_labels = x.flat() if x is not None and x.axes == (1,) else None
    if x is not None and (x.axes != (1,) or reused):
        ctx.state.lock(x.labels, "conv input not laid out as N,C,...")
        in_labels = None
    if depthwise and in_labels is not None:
        # with a channel multiplier m, output channels i*m .. i*m+m-1 read input channel i alone:
        # they carry its atom and go with it (MobileNet-v1 / Xception-style depth multipliers)
        out_labels = np.repeat(in_labels, cout // cin) if cout != cin else in_labels
        record_member(ctx, name, "weight", 0, out_labels, "out")
        if m.bias is not None:
            record_member(ctx, name, "bias", 0, out_labels, "out")
        ctx.draft("dwconv", [in_labels], out_labels)
        remember_call(ctx, in_labels)
        if shareable:
            first_call(ctx, in_labels, out_labels)
        return ChannelInfo((1,), out_labels)
    out = ctx.state.new_source(name, "layer", cout)
    if reused:
        ctx.state.lock(out, f"module {name} is called more than once")
    if in_labels is not None:
        if groups == 1:
            record_member(ctx, name, "weight", 1, in_labels, "in")
        else:
            buckets = np.arange(cin) // (cin // groups)
            record_member(ctx, name, "weight", 1, in_labels, "in", buckets=buckets)
            ctx.state.partitions.append(Partition(in_labels, buckets, "balanced", f"grouped conv {name} input"))
    if groups > 1 and not depthwise:
        ctx.state.partitions.append(Partition(out, np.arange(cout) // (cout // groups), "balanced", f"grouped conv {name} output"))
    record_member(ctx, name, "weight", 0, out, "out")
    if m.bias is not None:
        record_member(ctx, name, "bias", 0, out, "out")
    ctx.draft(kind, [in_labels if in_labels is not None else np.full(cin, -1)], out)
    remember_call(ctx, in_labels, out)
    if shareable and not reused:
        first_call(ctx, in_labels, out)
    return ChannelInfo((1,), out)


def conv_transpose(ctx: RuleContext) -> Info:
    m: nn.ConvTranspose2d = ctx.module()
    name = ctx.module_name
    _, x = _input(ctx)
    reused = check_reuse(ctx)
    out = ctx.state.new_source(name, "layer", m.out_channels)
    in_labels = x.flat() if x is not None and x.axes == (1,) and not reused else None
    if x is not None and in_labels is None:
        ctx.state.lock(x.labels, "transposed conv input not prunable here")
    if m.groups != 1 or reused:
        ctx.state.lock(out, f"grouped or reused transposed conv {name}")
        if in_labels is not None:
            ctx.state.lock(in_labels, f"grouped or reused transposed conv {name}")
            in_labels = None
    if in_labels is not None:
        record_member(ctx, name, "weight", 0, in_labels, "in")
    record_member(ctx, name, "weight", 1, out, "out")
    if m.bias is not None:
        record_member(ctx, name, "bias", 0, out, "out")
    ctx.draft("convtranspose", [in_labels if in_labels is not None else np.full(m.in_channels, -1)], out)
    remember_call(ctx, in_labels, out)
    return ChannelInfo((1,), out)


def linear(ctx: RuleContext) -> Info:
    m: nn.Linear = ctx.module()
    name = ctx.module_name
    arg, x = _input(ctx)
    reused = check_reuse(ctx)
    value = ctx.args[0]
    last = value.dim() - 1
    in_labels = None
    if x is not None:
        if x.axes == (last,) and not reused:
            in_labels = x.flat()
            record_member(ctx, name, "weight", 1, in_labels, "in")
        elif last in x.axes or reused:
            ctx.state.lock(x.labels, f"Linear {name} input features mix channels with other axes")
    out = ctx.state.new_source(name, "layer", m.out_features)
    if reused:
        ctx.state.lock(out, f"module {name} is called more than once")
    remember_call(ctx, in_labels, out)
    record_member(ctx, name, "weight", 0, out, "out")
    if m.bias is not None:
        record_member(ctx, name, "bias", 0, out, "out")
    axes = (ctx.out.dim() - 1,)
    if x is not None and last not in x.axes and x.axes:
        # Linear over a non-channel axis (rare): the other axes keep their channels
        ctx.state.lock(out, f"Linear {name} applied along a non-channel axis")
        return x
    ctx.draft("linear", [in_labels if in_labels is not None else np.full(m.in_features, -1)], out)
    return ChannelInfo(axes, out)


def batchnorm(ctx: RuleContext) -> Info:
    m = ctx.module()
    _, x = _input(ctx)
    if x is None:
        return None
    if x.axes == (1,) and shared_call(ctx, x.flat()) is not None:
        return x  # called again on as many channels: tied to the first call's
    reused = check_reuse(ctx)  # counted on every call, so a later one locks what this one ties
    if x.axes != (1,) or reused:
        ctx.lock_inputs("batch norm over channels the graph cannot place, or a reused norm")
        return x
    tensors = [(a, "out") for a in ("weight", "bias") if getattr(m, a, None) is not None]
    tensors += [(a, "stat") for a in ("running_mean", "running_var") if getattr(m, a, None) is not None]
    if not tensors:
        ctx.state.lock(x.labels, f"norm {ctx.module_name} has no per-channel tensors to slice")
    for attr, role in tensors:
        record_member(ctx, ctx.module_name, attr, 0, x.flat(), role)
    remember_call(ctx, x.flat())
    first_call(ctx, x.flat(), x.flat())
    return x


def instancenorm(ctx: RuleContext) -> Info:
    """Statistics per sample and channel, so channels are independent as under batch norm, whose rule
    slices its affine weights and running statistics. Without either, nothing would carry the new
    channel count (torch warns on every call after surgery), so those channels stay."""
    m = ctx.module()
    if m.affine or m.track_running_stats:
        return batchnorm(ctx)
    ctx.lock_inputs(f"instance norm {ctx.module_name} has no affine weights or running statistics to slice")
    _, x = _input(ctx)
    return x


def groupnorm(ctx: RuleContext) -> Info:
    m: nn.GroupNorm = ctx.module()
    _, x = _input(ctx)
    if x is None:
        return None
    reused = check_reuse(ctx)
    if x.axes != (1,) or not m.affine or reused:
        ctx.lock_inputs("group norm the graph cannot slice")
        return x
    labels = x.flat()
    block = m.num_channels // m.num_groups
    ctx.state.partitions.append(Partition(labels, np.arange(m.num_channels) // block, "blocks", f"GroupNorm {ctx.module_name}"))
    for attr in ("weight", "bias"):
        record_member(ctx, ctx.module_name, attr, 0, labels, "out")
    remember_call(ctx, labels)
    return x


def layernorm(ctx: RuleContext) -> Info:
    m: nn.LayerNorm = ctx.module()
    _, x = _input(ctx)
    if x is None:
        return None
    ndim = ctx.args[0].dim()
    normalized = set(range(ndim - len(m.normalized_shape), ndim))
    if not (normalized & set(x.axes)):
        return x  # normalises over space only: channels untouched
    reused = check_reuse(ctx)
    if x.axes != (ndim - 1,) or len(m.normalized_shape) != 1 or not m.elementwise_affine or reused:
        ctx.lock_inputs("layer norm over channels and other axes together")
        return x
    labels = x.flat()
    for attr in ("weight", "bias"):
        if getattr(m, attr, None) is not None:
            record_member(ctx, ctx.module_name, attr, 0, labels, "out")
    # mean and variance are taken over the channels, so removing some changes the rest slightly
    ctx.state.mark_inexact(labels, f"LayerNorm {ctx.module_name} normalises over these channels")
    remember_call(ctx, labels)
    return x


def prelu(ctx: RuleContext) -> Info:
    m: nn.PReLU = ctx.module()
    _, x = _input(ctx)
    if x is None or m.num_parameters == 1:
        return x
    reused = check_reuse(ctx)
    if x.axes != (1,) or reused:
        ctx.lock_inputs("PReLU on channels the graph cannot place")
        return x
    record_member(ctx, ctx.module_name, "weight", 0, x.flat(), "aux")
    remember_call(ctx, x.flat())
    return x


def pool(op: str):  # noqa: ANN201
    return spatial(op)


MODULE_RULES: dict[type, Any] = {
    nn.Conv1d: conv,
    nn.Conv2d: conv,
    nn.ConvTranspose2d: conv_transpose,
    nn.Linear: linear,
    nn.BatchNorm1d: batchnorm,
    nn.BatchNorm2d: batchnorm,
    nn.InstanceNorm1d: instancenorm,
    nn.InstanceNorm2d: instancenorm,
    nn.GroupNorm: groupnorm,
    nn.LayerNorm: layernorm,
    nn.PReLU: prelu,
    nn.MaxPool2d: spatial("maxpool"),
    nn.AvgPool2d: spatial("avgpool"),
    nn.AdaptiveAvgPool2d: spatial("avgpool"),
    nn.AdaptiveMaxPool2d: spatial("maxpool"),
    nn.Upsample: spatial("upsample"),
    nn.UpsamplingNearest2d: spatial("upsample"),
    nn.UpsamplingBilinear2d: spatial("upsample"),
    # padding on H, W (or L) only: channels pass through (spatial() locks a pad that changes them)
    **{pad: padding for pad in (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d, nn.ReflectionPad2d,
                                nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d)},
    nn.Flatten: shape_op,
    nn.Unflatten: shape_op,
    nn.ChannelShuffle: channel_shuffle(lambda ctx: ctx.module().groups),
    nn.PixelShuffle: pixel_shuffle(lambda ctx: ctx.module().upscale_factor, unshuffle=False),
    nn.PixelUnshuffle: pixel_shuffle(lambda ctx: ctx.module().downscale_factor, unshuffle=True),
    nn.LocalResponseNorm: cross_channel_norm,
    nn.Softmax: softmax_like,
    nn.Softmax2d: softmax_like,  # over the channels: locks them, saying so
    nn.LogSoftmax: softmax_like,
    nn.Softmin: softmax_like,
    **{act: passthrough for act in ACTIVATIONS},
}

#: weighted layers whose user subclasses (timm's Conv2dSame, BiT's StdConv2d) the capture keeps whole,
#: pruned by the base class's rule (`capture.is_subclass_leaf`). Not norms: a subclass there often moves
#: the channel axis (torchvision's LayerNorm2d permutes to channels-last), so those are traced through
WEIGHTED_LAYER_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

#: activation names a backend fuses into the conv before it (LayerSpec.activation)
FUSED_ACTIVATION_NAMES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.Hardswish: "hardswish", nn.GELU: "gelu", nn.Sigmoid: "sigmoid",
}


def rule_for_module(module: nn.Module) -> Any:
    for cls in type(module).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return None
