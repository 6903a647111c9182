"""Per-op channel rules: how each op moves, ties or consumes channel labels.

Registries map module types / functions / method names to a rule; an op that
is in none of them is *unknown*, and its tensors' channels are locked (never
pruned) with a warning naming the node and the op. A rule may lock too: being
conservative can only cost speed, never correctness.

Long because it is the registry of channel rules, one short function per op kind; splitting
it by kind would scatter the registry.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from hadmc_deploy.graph.labels import ChannelInfo, LabelState, Member, Partition, info_from_full

Info = ChannelInfo | None


def make_info(axes: tuple[int, ...], labels: np.ndarray) -> ChannelInfo:
    """Drop size-1 channel axes: a single broadcast channel ties to nothing."""
    keep = [i for i, size in enumerate(labels.shape) if size > 1]
    return ChannelInfo(tuple(axes[i] for i in keep), labels.reshape([labels.shape[i] for i in keep]))


@dataclass
class LayerDraft:
    """A costed node, with the atoms along its input/output channels (turned into groups later)."""

    name: str
    node: fx.Node
    op: str
    module: nn.Module | None
    in_labels: list[np.ndarray]  # one per tensor input (concat has several)
    out_labels: np.ndarray | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleContext:
    state: LabelState
    node: fx.Node
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any
    infos: dict[fx.Node, Any]
    drafts: list[LayerDraft]
    module_name: str = ""

    def info(self, arg: Any) -> Info:
        value = self.infos.get(arg) if isinstance(arg, fx.Node) else None
        return value if isinstance(value, ChannelInfo) else None

    def tensor_args(self) -> list[tuple[Any, torch.Tensor]]:
        """(fx arg, value) for every tensor among the node's args and kwargs, lists flattened."""
        found: list[tuple[Any, torch.Tensor]] = []

        def visit(node_arg: Any, value: Any) -> None:
            if isinstance(value, torch.Tensor):
                found.append((node_arg, value))
            elif isinstance(value, (list, tuple)) and isinstance(node_arg, (list, tuple)):
                for a, v in zip(node_arg, value, strict=False):
                    visit(a, v)
            elif isinstance(value, dict) and isinstance(node_arg, dict):
                for key, v in value.items():
                    visit(node_arg.get(key), v)

        for a, v in zip(self.node.args, self.args, strict=False):
            visit(a, v)
        for k, v in self.kwargs.items():
            visit(self.node.kwargs.get(k), v)
        return found

    def op_name(self) -> str:
        n = self.node
        if n.op == "call_module":
            return f"{type(self.module()).__name__} (module {n.target})"
        if n.op == "call_method":
            return f"Tensor.{n.target}"
        if hasattr(n.target, "scripted"):  # capture.opaque_scripted_functions
            return f"TorchScript function {n.target.scripted.name}"
        return getattr(n.target, "__name__", str(n.target))

    def module(self) -> nn.Module:
        return self.infos["__root__"].get_submodule(self.node.target)

    def lock_inputs(self, reason: str, warn: bool = True) -> None:
        locked_any = False
        for arg, _ in self.tensor_args():
            info = self.info(arg)
            if info is not None and info.labels.size:
                self.state.lock(info.labels, reason)
                locked_any = True
        if warn and locked_any:
            self.state.warn(f"node {self.node.name!r} ({self.op_name()}): {reason}; the channels it touches are not pruned")

    def draft(self, op: str, in_labels: list[np.ndarray], out_labels: np.ndarray | None, **extra: Any) -> None:
        first = next((v for _, v in self.tensor_args()), None)
        in_shape = tuple(first.shape) if first is not None else ()
        out_shape = tuple(self.out.shape) if isinstance(self.out, torch.Tensor) else ()
        self.drafts.append(LayerDraft(self.node.name if not self.module_name else self.module_name, self.node, op, None, in_labels, out_labels, in_shape, out_shape, extra))


Rule = Callable[[RuleContext], Any]


# -- generic rules ---------------------------------------------------------------------------
def unknown(ctx: RuleContext) -> Info:
    if not isinstance(ctx.out, torch.Tensor) and not isinstance(ctx.out, (list, tuple)):
        return None  # sizes, dtypes, python numbers: no channels involved
    for arg, value in ctx.tensor_args():
        if value is ctx.out:  # returns its input unchanged here (stochastic depth in eval, a wrapped no-op)
            return ctx.info(arg)
    ctx.lock_inputs("operation not understood by the channel graph")
    return None


def passthrough(ctx: RuleContext) -> Info:
    """Same-shape ops applied per element or per channel (activations, dropout, contiguous)."""
    tensors = ctx.tensor_args()
    if not tensors:
        return None
    info = ctx.info(tensors[0][0])
    if info is not None and isinstance(ctx.out, torch.Tensor) and tuple(ctx.out.shape) != tuple(tensors[0][1].shape):
        ctx.lock_inputs("output shape differs from its input")
        return None
    return info


def spatial(op: str | None) -> Rule:
    """Ops on H, W only (pools, interpolate): channels stay on axis 1."""

    def rule(ctx: RuleContext) -> Info:
        tensors = ctx.tensor_args()
        info = ctx.info(tensors[0][0]) if tensors else None
        if info is None:
            return None
        # a single channel (a grayscale input) has no channel axis in its labels
        on_axis_1 = info.axes == (1,) or (info.axes == () and tensors[0][1].dim() > 1 and tensors[0][1].shape[1] == 1)
        if not on_axis_1 or not isinstance(ctx.out, torch.Tensor) or ctx.out.shape[1] != tensors[0][1].shape[1]:
            ctx.lock_inputs("spatial op applied to a tensor whose channels are not on axis 1")
            return None
        if op is not None:
            kind = op
            if op in ("avgpool", "maxpool") and tuple(ctx.out.shape[2:]) == (1, 1):
                kind = "globalpool"
            ctx.draft(kind, [info.flat()], info.flat())
        return info

    return rule


def returned_container(ctx: RuleContext) -> Info:
    """A namedtuple (or other tuple subclass) built from tensors: returned, its tensors are outputs
    and locked as such, quietly; used inside the model, not followed (locked, with a warning)."""
    if ctx.node.users and all(user.op == "output" for user in ctx.node.users):
        for arg, _ in ctx.tensor_args():
            info = ctx.info(arg)
            if info is not None:
                ctx.state.lock(info.labels, "a model output (classes, boxes, features) is never pruned")
        return None
    return unknown(ctx)


def padding(ctx: RuleContext) -> Info:
    """Pads on H, W (or L): channels pass through; a constant other than zero makes a zeroed channel's
    border non-zero, so zeroing it no longer equals removing it (inexact, still prunable)."""
    info = spatial(None)(ctx)
    if ctx.node.op == "call_module":
        module = ctx.module()
        value = getattr(module, "value", 0.0)
    else:
        mode = ctx.kwargs.get("mode", ctx.args[2] if len(ctx.args) > 2 else "constant")
        value = ctx.kwargs.get("value", ctx.args[3] if len(ctx.args) > 3 else None) if mode == "constant" else 0.0
    if info is not None and value:
        ctx.state.mark_inexact(info.labels, f"node {ctx.node.name!r} pads with {value}, not zero")
    return info


def elementwise(ctx: RuleContext) -> Info:
    """add/sub/mul/div with broadcasting: inputs' channels at the same position are tied."""
    if not isinstance(ctx.out, torch.Tensor):
        return None
    ndim = ctx.out.dim()
    infos: list[ChannelInfo] = []
    opaque: list[tuple[int, ...]] = []
    for arg, value in ctx.tensor_args():
        info = ctx.info(arg)
        shift = ndim - value.dim()
        if info is None:
            if value.numel() > 1:
                opaque.append((1,) * shift + tuple(value.shape))
            continue
        infos.append(ChannelInfo(tuple(a + shift for a in info.axes), info.labels))
    if not infos:
        return None
    ref = max(infos, key=lambda i: i.labels.size)
    for other in infos:
        if other is ref or (other.labels.size == 1 and ref.labels.size > 1):
            continue
        if other.axes != ref.axes or other.labels.shape != ref.labels.shape:
            ctx.lock_inputs("elementwise op between tensors whose channel axes do not line up")
            return None
        ctx.state.uf.union_arrays(ref.labels, other.labels)
    for shape in opaque:
        if any(shape[a] > 1 for a in ref.axes):
            ctx.lock_inputs("elementwise op with a tensor whose channels are unknown")
            return ref
    tensor_inputs = sum(1 for i in infos if i.labels.size > 1)
    if tensor_inputs >= 2 and ref.axes == (1,):
        op = "mul" if ctx.node.target in (operator.mul, torch.mul, "mul") else "add"
        ctx.draft(op, [i.flat() for i in infos if i.labels.size > 1], ref.flat(), n_inputs=tensor_inputs)
    return ref


def _label_tensor(info: ChannelInfo, shape: tuple[int, ...]) -> torch.Tensor:
    # C order: `view` follows the logical (row-major) order of the real tensor, which ran fine;
    # numpy's default copy would keep a permuted layout and make `view` refuse it
    return torch.from_numpy(np.array(info.full(shape), copy=True, order="C"))


def _const_dims(node: fx.Node, out_ndim: int) -> list[bool] | None:
    """For view/reshape: which output dims the code fixes as constants (ints other than -1)."""
    target = node.target
    if target in ("flatten", torch.flatten):
        return [False] * out_ndim
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    if "shape" in node.kwargs:
        sizes = list(node.kwargs["shape"])
    if len(sizes) != out_ndim:
        return None
    return [isinstance(s, int) and s != -1 for s in sizes]


def shape_op(ctx: RuleContext) -> Any:
    """View-like ops: run the op itself on the label tensors, then read the labels back out.

    Running the real op means permutations (channel shuffle), offsets (slicing,
    concat) and merges with space (flatten) come out right without a rule per
    op. Sizes the code hard-codes would break after pruning, so they lock.
    """
    node = ctx.node
    if node.target is operator.getitem and isinstance(ctx.args[0], (list, tuple)):
        pieces = ctx.infos.get(node.args[0])
        return pieces[node.args[1]] if isinstance(pieces, list) and isinstance(node.args[1], int) else None
    tensors = ctx.tensor_args()
    infos = [ctx.info(a) for a, _ in tensors]
    if not tensors or all(i is None for i in infos):
        return None
    if any(i is None and v.numel() > 1 for i, v in zip(infos, (v for _, v in tensors), strict=True)):
        ctx.lock_inputs("view-like op mixing tensors whose channels are unknown")
        return None

    def substitute(node_arg: Any, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            info = ctx.info(node_arg)
            return _label_tensor(info, tuple(value.shape)) if info is not None else torch.zeros(value.shape, dtype=torch.int64)
        if isinstance(value, (list, tuple)) and isinstance(node_arg, (list, tuple)):
            return type(value)(substitute(a, v) for a, v in zip(node_arg, value, strict=False))
        return value

    args = tuple(substitute(a, v) for a, v in zip(node.args, ctx.args, strict=False)) + tuple(ctx.args[len(node.args):])
    kwargs = {k: substitute(node.kwargs.get(k), v) for k, v in ctx.kwargs.items()}
    try:
        if node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "call_module":
            result = ctx.module()(*args, **kwargs)
        else:
            result = node.target(*args, **kwargs)
    except Exception as exc:  # the op refused integer tensors: treat as unknown
        ctx.lock_inputs(f"view-like op could not be followed ({type(exc).__name__})")
        return None
    in_info = next(i for i in infos if i is not None)
    in_count = sum(i.labels.size for i in infos if i is not None)
    if isinstance(result, (list, tuple)):
        return _split_result(ctx, in_info, result)
    out = info_from_full(result.numpy())
    if out is None:
        ctx.lock_inputs("channels mixed with spatial positions (e.g. pixel shuffle)")
        return None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if name in ("view", "reshape", "flatten", "unflatten") or isinstance(node.target, str) and node.op == "call_module":
        return _check_reshape(ctx, in_info, out)
    if name == "getitem" and out.labels.size != in_count:
        ctx.lock_inputs("slicing along the channel axis with fixed bounds")
        return None
    if name == "cat":
        return _check_cat(ctx, infos, out)
    return out


def _check_reshape(ctx: RuleContext, in_info: ChannelInfo, out: ChannelInfo) -> Info:
    const = [False] * ctx.out.dim() if ctx.node.op == "call_module" else _const_dims(ctx.node, ctx.out.dim())
    if const is None:
        ctx.lock_inputs("reshape whose target sizes could not be read")
        return None
    fixed = [a for a in out.axes if const[a]]
    if not fixed:
        return out
    if len(out.axes) == 2 and len(fixed) == 1 and len(in_info.axes) == 1:
        # channel shuffle's view(N, groups, C // groups, ...): `groups` is fixed by the code,
        # so channel j of every group must be kept or removed together.
        along = out.axes.index(fixed[0])
        moved = np.moveaxis(out.labels, along, 0)
        for row in moved[1:]:
            ctx.state.uf.union_arrays(moved[0], row)
        return out
    ctx.lock_inputs("reshape with a channel size fixed in the code")
    return None


def _check_cat(ctx: RuleContext, infos: list[Info], out: ChannelInfo) -> Info:
    node = ctx.node
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    ndim = ctx.out.dim()
    dim = dim % ndim if isinstance(dim, int) else None
    present = [i for i in infos if i is not None and i.labels.size > 1]
    if dim is not None and present and all(dim not in i.axes for i in present):
        # concatenated along space or batch: channels at the same position are tied
        ref = present[0]
        for other in present[1:]:
            if other.axes != ref.axes or other.labels.shape != ref.labels.shape:
                ctx.lock_inputs("concat along a non-channel axis of tensors with different channel layouts")
                return None
            ctx.state.uf.union_arrays(ref.labels, other.labels)
        return ref
    if out.axes == (1,):
        ctx.draft("concat", [i.flat() for i in infos if i is not None], out.flat(), n_inputs=len(infos))
    return out


def _split_result(ctx: RuleContext, in_info: ChannelInfo, result: Any) -> Any:
    """chunk/split: pieces along channels must shrink equally, or the code's split point moves."""
    node = ctx.node
    outs = [info_from_full(r.numpy()) for r in result]
    if any(o is None for o in outs):
        ctx.lock_inputs("split mixing channels with space")
        return None
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    if not isinstance(dim, int):
        ctx.lock_inputs("split along an axis the graph cannot read")
        return None
    dim = dim % ctx.args[0].dim()
    if dim not in in_info.axes:
        return outs
    sizes = [r.shape[dim] for r in result]
    size_arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks", node.kwargs.get("split_size_or_sections"))
    size_arg = size_arg if size_arg is not None else node.kwargs.get("sections")
    # chunk(n) and tensor_split(x, n) cut n pieces of whatever there is; split(x, 16) fixes their size
    equal_pieces = len(set(sizes)) == 1 and (name == "chunk" or isinstance(size_arg, fx.Node) or (name == "tensor_split" and isinstance(size_arg, int)))
    if in_info.axes != (dim,) or not equal_pieces:
        ctx.lock_inputs("split into pieces of sizes fixed in the code")
        return None
    labels = in_info.flat()
    buckets = np.repeat(np.arange(len(sizes)), sizes)
    ctx.state.partitions.append(Partition(labels, buckets, "balanced", f"split at node {node.name!r}"))
    return outs


def reduction(ctx: RuleContext) -> Info:
    """mean/sum/amax/max/min/norm over dims: fine over space; over the channels, a statistic of them
    whose channels also flow on by another path (a normalisation, an attention map) keeps them
    prunable, inexactly; one that is all that remains of them locks them. torch.max(a, b) and
    torch.min(a, b) are elementwise; max/min over a dim give (values, indices), both labelled."""
    tensors = ctx.tensor_args()
    target = ctx.node.target
    extreme = target in EXTREMES
    if extreme and len(tensors) > 1:
        return elementwise(ctx)  # torch.max(a, b): the elementwise maximum
    info = ctx.info(tensors[0][0]) if tensors else None
    pair = extreme and isinstance(ctx.out, tuple)  # (values, indices)
    if info is None or not isinstance(ctx.out[0] if pair else ctx.out, torch.Tensor):
        return None
    x = tensors[0][1]
    dim_at, keepdim_at = REDUCTION_ARG_POSITIONS.get(target, (1, 2))
    dims = ctx.kwargs.get("dim", ctx.args[dim_at] if len(ctx.args) > dim_at else None)
    if dims is None:
        ctx.lock_inputs("reduction over every axis, channels included")
        return None
    dims = {d % x.dim() for d in ((dims,) if isinstance(dims, int) else dims)}
    keepdim = bool(ctx.kwargs.get("keepdim", ctx.args[keepdim_at] if len(ctx.args) > keepdim_at else False))
    if dims & set(info.axes) and not set(info.axes) <= dims:
        info = _tie_along(ctx, info, dims)  # over the branches of a stack (SKNet): channels stay
    elif dims & set(info.axes):
        if target in REDUCTIONS and set(info.axes) <= dims and _channels_flow_on(ctx.node):
            # a mean or variance over the channels, broadcast back (a hand-written channels-first
            # LayerNorm, as ConvNeXt's reference code has it), or CBAM's channel mean and max feeding
            # a spatial attention map: prunable as nn.LayerNorm is, inexactly, since removing
            # channels changes the statistic; the result carries no channels
            name = target if isinstance(target, str) else target.__name__
            ctx.state.mark_inexact(info.flat(), f"node {ctx.node.name!r} takes a {name} over these channels")
            return [None, None] if pair else None
        ctx.lock_inputs("reduction over the channel axis, all that remains of these channels")
        return None
    if keepdim:
        axes = info.axes
    else:
        axes = tuple(a - sum(1 for d in dims if d < a) for a in info.axes)
    out = ctx.out[0] if pair else ctx.out
    if info.axes == (1,) and tuple(out.shape[2:]) in ((1, 1), ()):
        ctx.draft("globalpool", [info.flat()], info.flat())
    result = ChannelInfo(axes, info.labels)
    return [result, result] if pair else result


def _tie_along(ctx: RuleContext, info: ChannelInfo, dims: set[int]) -> ChannelInfo:
    """`info` with its channel axes in `dims` folded away: the slices along them are tied channel by
    channel. Why: a sum, mean or extreme over a stack's branch axis (SKNet's `torch.stack(...).sum(1)`),
    or a softmax along it, combines channel c of every branch; removing c from all of them together
    is exact, as through an add. The axis numbers stay the input's (the caller shifts them)."""
    folded = [k for k, a in enumerate(info.axes) if a in dims]
    labels = np.moveaxis(info.labels, folded, list(range(len(folded))))
    rows = labels.reshape(-1, *labels.shape[len(folded):])
    for row in rows[1:]:
        ctx.state.uf.union_arrays(rows[0].reshape(-1), row.reshape(-1))
    return ChannelInfo(tuple(a for a in info.axes if a not in dims), np.ascontiguousarray(rows[0]))


def _channels_flow_on(node: fx.Node, depth: int = 8) -> bool:
    """Whether the channels a statistic reads also reach the model by another path than statistics
    of them (ConvNeXt's `x - u` beside its variance `(x - u).pow(2).mean(1)`, CBAM's `x * attention`):
    some user, other than a statistic, of the statistic's input or of the ops it was computed from
    up to the last layer. Why: where the statistic is all that remains of the channels
    (`stem(x).mean(1)` into a head), pruning them changes everything downstream, and they stay locked."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or depth == 0:
        return False
    if any(user is not node and user.target not in REDUCTIONS for user in source.users):
        return True
    return source.op in ("call_function", "call_method") and _channels_flow_on(source, depth - 1)


def matmul(ctx: RuleContext) -> Info:
    """`a @ b` (torch.matmul, torch.bmm): a non-local or self-attention block's products. Channels on
    the contracted axis (a's last, b's second last) tie a's to b's, exactly: a removed channel removes
    one term of every sum, and the product carries no channels; channels elsewhere (a's rows, b's
    columns) pass into the product. A contraction with a tensor whose channels are unknown (a weight
    matrix, which surgery would not slice) locks."""
    tensors = ctx.tensor_args()
    if len(tensors) != 2 or not isinstance(ctx.out, torch.Tensor) or min(v.dim() for _, v in tensors) < 2:
        return unknown(ctx)
    (a_arg, a), (b_arg, b) = tensors
    ia, ib = ctx.info(a_arg), ctx.info(b_arg)
    ka, kb = a.dim() - 1, b.dim() - 2
    on_a, on_b = ia is not None and ka in ia.axes, ib is not None and kb in ib.axes
    if on_a or on_b:
        if not (on_a and on_b and ia.axes == (ka,) and ib.axes == (kb,)):
            ctx.lock_inputs("matmul contracts channels with a tensor whose channels are unknown or laid out otherwise")
            return None
        ctx.state.uf.union_arrays(ia.labels, ib.labels)
        return None
    if ia is not None and ib is not None:
        ctx.lock_inputs("matmul of two tensors that both carry channels outside the contracted axis")
        return None
    if ia is not None and len(ia.axes) == 1:
        return ChannelInfo((ia.axes[0] + ctx.out.dim() - a.dim(),), ia.labels)
    if ib is not None and ib.axes == (b.dim() - 1,):
        return ChannelInfo((ctx.out.dim() - 1,), ib.labels)
    if ia is not None or ib is not None:
        ctx.lock_inputs("matmul with channels on a batch axis")
    return None


def grid_sample(ctx: RuleContext) -> Info:
    """`F.grid_sample(x, grid)` (a spatial transformer, a deformable or flow warp): every channel of x is
    sampled at the same points, so x's channels pass through exactly; the grid's last axis holds
    coordinates, so channels that reach it (a conv predicting a flow) are locked."""
    tensors = ctx.tensor_args()
    if len(tensors) > 1 and (grid := ctx.info(tensors[1][0])) is not None:
        ctx.state.lock(grid.labels, f"node {ctx.node.name!r} reads them as sampling coordinates")
    return spatial(None)(ctx)


def cross_channel_norm(ctx: RuleContext) -> Info:
    """LocalResponseNorm: each channel divided by a sum over its neighbours; channels pass through,
    prunable inexactly (removing one changes its neighbours' sums)."""
    info = passthrough(ctx)
    if info is not None:
        ctx.state.mark_inexact(info.flat(), f"node {ctx.node.name!r} normalises each channel by its neighbours")
    return info


def normalize(ctx: RuleContext) -> Info:
    """`F.normalize(x, p, dim)`: channels pass through; over the channel axis each position is divided
    by a norm of its channels, so they stay prunable, inexactly, as through a LayerNorm."""
    tensors = ctx.tensor_args()
    info = ctx.info(tensors[0][0]) if tensors else None
    if info is None or not isinstance(ctx.out, torch.Tensor):
        return None
    dim = ctx.kwargs.get("dim", ctx.args[2] if len(ctx.args) > 2 else 1) % ctx.out.dim()
    if dim in info.axes:
        ctx.state.mark_inexact(info.flat(), f"node {ctx.node.name!r} divides by a norm over these channels")
    return info


def functional_layer_norm(ctx: RuleContext) -> Info:
    """`F.layer_norm(x, shape, weight, bias)` (torchvision's LayerNorm2d): like nn.LayerNorm, with weight
    and bias read as parameters (get_attr) that join the channels they scale."""
    node_args = list(ctx.node.args) + [None] * 4
    x_arg, x_value = node_args[0], ctx.args[0]
    x = ctx.info(x_arg)
    if x is None or not isinstance(x_value, torch.Tensor):
        return None
    shape = ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs.get("normalized_shape")
    ndim = x_value.dim()
    count = 1 if isinstance(shape, int) else len(shape)
    if not set(range(ndim - count, ndim)) & set(x.axes):
        return x  # normalises over space only
    params = [(node_args[i] if len(ctx.node.args) > i else ctx.node.kwargs.get(k)) for i, k in ((2, "weight"), (3, "bias"))]
    infos = [ctx.info(p) for p in params if isinstance(p, fx.Node)]
    if x.axes != (ndim - 1,) or count != 1 or any(i is None or i.labels.shape != x.labels.shape for i in infos) or \
            len(infos) != sum(isinstance(p, fx.Node) for p in params):
        ctx.lock_inputs("layer norm over channels and other axes together")
        return x
    for info in infos:
        ctx.state.uf.union_arrays(x.labels, info.labels)
    ctx.state.mark_inexact(x.labels, f"layer_norm at node {ctx.node.name!r} normalises over these channels")
    return x


def channel_shuffle(groups_of: Callable[[RuleContext], int]) -> Rule:
    def rule(ctx: RuleContext) -> Info:
        info = ctx.info(ctx.tensor_args()[0][0])
        if info is None:
            return None
        groups = groups_of(ctx)
        if info.axes != (1,) or info.labels.size % groups:
            ctx.lock_inputs("channel shuffle on an unexpected layout")
            return None
        grid = info.labels.reshape(groups, -1)
        for row in grid[1:]:
            ctx.state.uf.union_arrays(grid[0], row)
        return ChannelInfo((1,), np.ascontiguousarray(grid.T).reshape(-1))

    return rule


def pixel_shuffle(factor_of: Callable[[RuleContext], int], *, unshuffle: bool) -> Rule:
    """Depth-to-space (`PixelShuffle(r)`): output channel c is input channels c*r*r .. c*r*r+r*r-1
    laid out in space, so those r*r channels are tied (pruned together, the input staying a multiple
    of r*r) and the output channel carries them. Space-to-depth (`PixelUnshuffle(r)`): output
    channels c*r*r .. c*r*r+r*r-1 are input channel c's pixels and go with it. Why a rule of its own:
    `shape_op` sees channels mixed with space and locks both sides (a sub-pixel head's whole body)."""

    def rule(ctx: RuleContext) -> Info:
        info = ctx.info(ctx.tensor_args()[0][0])
        if info is None:
            return None
        blocks = factor_of(ctx) ** 2
        if info.axes == () and unshuffle:  # a single channel (an image): its pixels become channels
            info = ChannelInfo((1,), info.labels.reshape(1))
        if info.axes != (1,) or (not unshuffle and info.labels.size % blocks):
            ctx.lock_inputs("pixel shuffle on an unexpected layout")
            return None
        if unshuffle:
            return ChannelInfo((1,), np.repeat(info.labels, blocks))
        grid = info.labels.reshape(-1, blocks)
        for column in grid.T[1:]:
            ctx.state.uf.union_arrays(grid[:, 0], column)
        return ChannelInfo((1,), np.ascontiguousarray(grid[:, 0]))

    return rule


def softmax_like(ctx: RuleContext) -> Info:
    tensors = ctx.tensor_args()
    info = ctx.info(tensors[0][0]) if tensors else None
    if info is None:
        return None
    if ctx.node.op == "call_module":
        dim = getattr(ctx.module(), "dim", None)
    else:
        dim = ctx.kwargs.get("dim", ctx.args[1] if len(ctx.args) > 1 else None)
    dim = dim % tensors[0][1].dim() if dim is not None else None
    if dim is not None and dim in info.axes and len(info.axes) > 1:
        # along a stack's branch axis (SKNet's attention over its branches): each channel's entries
        # along it are tied, so a channel goes with its whole softmax row
        _tie_along(ctx, info, {dim})
        return info
    if dim is None or dim in info.axes:
        # a classifier that returns probabilities: its classes are an output, never pruned, so no warning
        returned = all(user.op == "output" for user in ctx.node.users)
        ctx.lock_inputs("softmax over the channel axis", warn=not returned)
        return None
    return info


def record_member(ctx: RuleContext, module: str, attr: str, axis: int, labels: np.ndarray, role: str, buckets: np.ndarray | None = None) -> None:
    ctx.state.members.append(Member(module, attr, axis, np.asarray(labels, dtype=np.int64).reshape(-1), role, buckets))


ELEMENTWISE_TARGETS: tuple[Any, ...] = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div, torch.where, torch.maximum, torch.minimum,
    # comparisons (masks for torch.where): channel c of the mask is channel c of its input
    operator.gt, operator.lt, operator.ge, operator.le, torch.gt, torch.lt, torch.ge, torch.le,
    # x ** 2 and x.pow(2): per element (a tensor exponent ties its channels as any operand does)
    operator.pow, torch.pow,
)
PASSTHROUGH_FUNCTIONS: tuple[Any, ...] = (
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu,
    F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout2d, torch.relu,
    torch.sigmoid, torch.tanh, F.selu, operator.neg, torch.neg, torch.clamp, torch.abs,
    torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.square, torch.reciprocal,
)
PASSTHROUGH_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "contiguous", "float", "to", "type_as", "clone",
    "detach", "clamp", "clamp_", "abs", "neg", "hardswish", "sqrt", "rsqrt", "exp", "log", "square", "reciprocal",
)
ELEMENTWISE_METHODS = ("add", "add_", "mul", "mul_", "sub", "div", "__add__", "__mul__", "gt", "lt", "ge", "le", "where", "pow")
SHAPE_FUNCTIONS: tuple[Any, ...] = (torch.flatten, torch.cat, torch.concat, torch.stack, torch.chunk, torch.split, torch.tensor_split, torch.permute,
                                    torch.transpose, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem)
SHAPE_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "chunk", "split", "tensor_split", "squeeze", "unsqueeze",
                 "unflatten", "expand", "expand_as", "t")
SPATIAL_FUNCTIONS: dict[Any, str | None] = {
    F.adaptive_avg_pool2d: "avgpool", F.adaptive_max_pool2d: "maxpool", F.avg_pool2d: "avgpool", F.max_pool2d: "maxpool",
    F.interpolate: "upsample",
}
#: max/min: a reduction with a dim ((values, indices)), elementwise with a second tensor
EXTREMES = (torch.max, torch.min, "max", "min")
NORMS = (torch.norm, torch.linalg.vector_norm, "norm")
#: every reduction summarises the channels it runs over: over the channel axis, where the channels
#: also flow on (SSD's L2Norm divides by a sum of squares, ConvNeXt's LayerNorm by a variance), they
#: stay prunable, inexactly (`reduction`)
REDUCTIONS = (torch.mean, torch.sum, torch.amax, torch.amin, torch.var, torch.std, "mean", "sum", "amax", "amin", "var", "std", *EXTREMES, *NORMS)
#: (position of dim, position of keepdim) where not (1, 2): var/std(x, dim, unbiased, keepdim),
#: norm(x, p, dim, keepdim), vector_norm(x, ord, dim, keepdim)
REDUCTION_ARG_POSITIONS: dict[Any, tuple[int, int]] = {
    torch.var: (1, 3), torch.std: (1, 3), "var": (1, 3), "std": (1, 3), **dict.fromkeys(NORMS, (2, 3)),
}
