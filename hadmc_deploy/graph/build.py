"""Turn traced channel labels into the `DependencyGraph` the other stages consume.

Groups are the connected sets of producers (atoms tied by union-find); each
union-find class is one channel of its group, numbered in the order the group's
first producer emits them, so a group's channel i is that layer's output
channel i whenever the mapping allows.

Long because the union-find over channel labels and the group/layer records it produces are
one construction.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from hadmc_deploy.graph.labels import LabelState, UnionFind
from hadmc_deploy.graph.module_rules import FUSED_ACTIVATION_NAMES
from hadmc_deploy.graph.rules import LayerDraft
from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph
from hadmc_deploy.specs import LayerSpec


@dataclass
class TensorAxis:
    """One axis of one parameter/buffer whose slices follow channels (what surgery slices)."""

    module: str
    attr: str
    axis: int
    role: str
    groups: np.ndarray  # group index per slice (-1: not in any group)
    classes: np.ndarray  # channel index within that group per slice
    buckets: np.ndarray | None = None  # grouped-conv input: each slice's conv group

    @property
    def tensor_name(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


def build_graph(state: LabelState, drafts: list[LayerDraft], input_shape: tuple[int, ...], model: nn.Module) -> DependencyGraph:
    n_atoms = len(state.uf.parent)
    roots = np.fromiter((state.uf.find(a) for a in range(n_atoms)), dtype=np.int64, count=n_atoms)
    src_of_atom = np.empty(n_atoms, dtype=np.int64)
    for i, src in enumerate(state.sources):
        src_of_atom[src.start : src.start + src.width] = i
    # producers sharing any channel class form one group
    suf = UnionFind()
    suf.add(len(state.sources))
    first_src: dict[int, int] = {}
    for a in range(n_atoms):
        r = int(roots[a])
        if r in first_src:
            suf.union(first_src[r], int(src_of_atom[a]))
        else:
            first_src[r] = int(src_of_atom[a])
    components: dict[int, list[int]] = {}
    for i in range(len(state.sources)):
        components.setdefault(suf.find(i), []).append(i)

    group_of_root = np.full(n_atoms, -1, dtype=np.int64)
    class_of_root = np.full(n_atoms, -1, dtype=np.int64)
    groups: list[ChannelGroup] = []
    used_ids: Counter[str] = Counter()
    for src_ids in sorted(components.values(), key=min):
        sources = [state.sources[i] for i in src_ids]
        leader = next((s for s in sources if s.kind == "layer"), sources[0])
        gid = leader.name
        used_ids[gid] += 1
        if used_ids[gid] > 1:
            gid = f"{gid}#{used_ids[gid]}"
        gi = len(groups)
        width = 0
        for s in [leader] + [s for s in sources if s is not leader]:
            for a in range(s.start, s.start + s.width):
                r = roots[a]
                if group_of_root[r] < 0:
                    group_of_root[r] = gi
                    class_of_root[r] = width
                    width += 1
        group = ChannelGroup(id=gid, width=width, prunable=True)
        if any(s.kind == "input" for s in sources):
            group.prunable, group.reason = False, "the network input"
        elif leader.kind != "layer":
            group.prunable, group.reason = False, "a parameter not tied to any layer"
        groups.append(group)
    group_of_atom = group_of_root[roots]
    class_of_atom = class_of_root[roots]

    for atom, reason in state.locked.items():
        g = groups[group_of_atom[atom]]
        if g.prunable:
            g.prunable, g.reason = False, reason
    for atom, reason in state.inexact.items():
        g = groups[group_of_atom[atom]]
        if g.exact:
            g.exact = False
            g.reason = g.reason or f"prunable, not exactly: {reason}"
    _apply_partitions(state, groups, group_of_atom, class_of_atom)
    for g in groups:
        if g.prunable and g.width <= g.min_width:
            g.prunable, g.reason = False, "no narrower width allowed" if g.width > 1 else "a single channel"

    axes = [_tensor_axis(m, group_of_atom, class_of_atom) for m in state.members]
    _describe_members(groups, axes)
    layers = [layer for d in drafts if (layer := _costed_layer(d, groups, group_of_atom)) is not None]
    module_types = {name: type(m).__name__ for name, m in model.named_modules() if name}
    return DependencyGraph(groups, layers, input_shape, list(state.warnings), axes, module_types)


def _tensor_axis(member: Any, group_of_atom: np.ndarray, class_of_atom: np.ndarray) -> TensorAxis:
    labels = member.labels
    valid = labels >= 0
    g = np.where(valid, group_of_atom[np.where(valid, labels, 0)], -1)
    c = np.where(valid, class_of_atom[np.where(valid, labels, 0)], -1)
    return TensorAxis(member.module, member.attr, member.axis, member.role, g, c, member.buckets)


def _apply_partitions(state: LabelState, groups: list[ChannelGroup], group_of_atom: np.ndarray, class_of_atom: np.ndarray) -> None:
    per_group: dict[int, list[tuple[np.ndarray, str, str]]] = {}
    for p in state.partitions:
        gids = group_of_atom[p.labels]
        classes = class_of_atom[p.labels]
        for gi in np.unique(gids):
            group = groups[gi]
            sel = gids == gi
            assign = np.full(group.width, -1, dtype=np.int64)
            ok = True
            for cls, bucket in zip(classes[sel], p.buckets[sel], strict=True):
                if assign[cls] not in (-1, bucket):
                    ok = False
                    break
                assign[cls] = bucket
            if not ok and p.mode == "balanced" and _every_class_in_every_bucket_alike(classes[sel], p.buckets[sel]):
                # a gated unit, `a, b = conv(x).chunk(2, 1); a * sigmoid(b)`: each channel lies once in each
                # half, so removing it shrinks every half alike and the recomputed split stays aligned
                assign, ok = np.zeros(group.width, dtype=np.int64), True
            if p.mode == "balanced" and ok:
                counts = Counter(classes[sel].tolist())
                ok = len(set(counts.values())) == 1
                per_bucket = Counter(assign[assign >= 0].tolist())
                ok = ok and len(set(per_bucket.values())) == 1
            if not ok:
                if group.prunable:
                    group.prunable, group.reason = False, f"{p.why} splits coupled channels unevenly"
                continue
            per_group.setdefault(int(gi), []).append((assign, p.mode, p.why))
    for gi, parts in per_group.items():
        group = groups[gi]
        modes = {mode for _, mode, _ in parts}
        if modes == {"blocks"}:
            first = parts[0][0]
            if any(not np.array_equal(first, a) for a, _, _ in parts) or (first < 0).any():
                group.prunable, group.reason = False, f"{parts[0][2]} blocks do not cover the whole group"
                continue
            sizes = Counter(first.tolist())
            if len(set(sizes.values())) != 1:
                group.prunable, group.reason = False, f"{parts[0][2]} has unequal blocks"
                continue
            block = next(iter(sizes.values()))
            group.cells, group.cell_mode = first.tolist(), "blocks"
            group.granularity = group.min_width = block
        elif "blocks" in modes:
            group.prunable, group.reason = False, "GroupNorm and a grouped conv or split constrain the same channels differently"
        else:
            keys = list(zip(*[a.tolist() for a, _, _ in parts], strict=True))
            ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
            cells = [ids[k] for k in keys]
            sizes = list(Counter(cells).values())
            unit = group.width // math.gcd(*sizes)
            group.cells, group.cell_mode = cells, "balanced"
            group.granularity = group.min_width = unit


def _every_class_in_every_bucket_alike(classes: np.ndarray, buckets: np.ndarray) -> bool:
    """Every class of the group occurs the same number of times in every bucket."""
    counts = Counter(zip(classes.tolist(), buckets.tolist(), strict=True))
    n_classes, n_buckets = len(set(classes.tolist())), len(set(buckets.tolist()))
    return len(counts) == n_classes * n_buckets and len(set(counts.values())) == 1


def _mapping(positions: np.ndarray, classes: np.ndarray, width: int) -> str:
    n = len(positions)
    if n == width and np.array_equal(classes, np.arange(width)):
        off = int(positions[0])
        return "identity" if off == 0 else f"offset {off}"
    if n % width == 0 and n > width and np.array_equal(classes, np.repeat(np.arange(width), n // width)):
        return f"each channel -> {n // width} features from {int(positions[0])}"
    if n % width == 0 and n > width and np.array_equal(classes, np.tile(np.arange(width), n // width)):
        return f"each channel -> {n // width} features every {width} from {int(positions[0])} (channels-last flatten)"
    return f"gather ({n} slices)"


def _describe_members(groups: list[ChannelGroup], axes: list[TensorAxis]) -> None:
    for ax in axes:
        for gi in np.unique(ax.groups[ax.groups >= 0]):
            pos = np.nonzero(ax.groups == gi)[0]
            groups[gi].members.append(
                {"tensor": ax.tensor_name, "axis": ax.axis, "role": ax.role, "mapping": _mapping(pos, ax.classes[pos], groups[gi].width)}
            )


def _terms(labels: np.ndarray, groups: list[ChannelGroup], group_of_atom: np.ndarray) -> tuple[tuple[str, int, int], ...]:
    terms: dict[str, list[int]] = {}
    for gi, count in Counter(np.where(labels >= 0, group_of_atom[np.where(labels >= 0, labels, 0)], -1).tolist()).items():
        if gi < 0:
            terms.setdefault("", [0, 0])
            terms[""][0] += count
            terms[""][1] += count
        else:
            terms[groups[gi].id] = [count, groups[gi].width]
    # keep the order in which the groups appear along the channel axis
    order = []
    for a in labels.tolist():
        gid = groups[group_of_atom[a]].id if a >= 0 else ""
        if gid not in order:
            order.append(gid)
    return tuple((gid, terms[gid][0], terms[gid][1]) for gid in order)


def _pair(v: Any, fill: int = 1) -> tuple[int, int]:
    """A 2-D (h, w) setting; a 1-D layer's (k,) is priced as a (1, k) conv over a (1, L) image,
    with `fill` on the missing axis (1 for kernel, stride, dilation; 0 for padding)."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return (fill, v[0]) if len(v) == 1 else (v[0], v[1])


def _hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) >= 4:
        return (int(shape[2]), int(shape[3]))
    if len(shape) == 3:
        return (1, int(shape[2]))
    return (1, 1)


def _fused_activation(node: fx.Node, root: nn.Module) -> str | None:
    """The activation right after this node (through one norm), which deployment fuses into it."""
    current = node
    for _ in range(2):
        users = list(current.users)
        if len(users) != 1:
            return None
        user = users[0]
        name = _activation_name(user, root)
        if name is not None:
            return name
        if user.op == "call_module" and isinstance(root.get_submodule(user.target), (nn.BatchNorm2d, nn.BatchNorm1d)):
            current = user
            continue
        return None
    return None


def _activation_name(node: fx.Node, root: nn.Module) -> str | None:
    F = torch.nn.functional
    functions = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish", F.gelu: "gelu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
    if node.op == "call_module":
        module = root.get_submodule(node.target)
        for cls, name in FUSED_ACTIVATION_NAMES.items():
            if type(module) is cls:
                return name
        return None
    if node.op == "call_function":
        return functions.get(node.target)
    if node.op == "call_method":
        return {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid"}.get(str(node.target))
    return None


def _costed_layer(d: LayerDraft, groups: list[ChannelGroup], group_of_atom: np.ndarray) -> CostedLayer | None:
    in_labels = np.concatenate(d.in_labels) if d.in_labels else np.zeros(0, dtype=np.int64)
    out_labels = d.out_labels if d.out_labels is not None else in_labels
    if len(in_labels) == 0 or len(out_labels) == 0:
        return None
    m = d.module
    root = d.node.graph.owning_module
    batch = int(d.in_shape[0]) if d.in_shape else 1
    common: dict[str, Any] = {"in_hw": _hw(d.in_shape), "out_hw": _hw(d.out_shape), "batch": batch}
    act = _fused_activation(d.node, root) if root is not None else None
    if d.op in ("conv", "dwconv", "gconv", "convtranspose"):
        padding = m.padding if not isinstance(m.padding, str) else tuple((k - 1) // 2 * dl for k, dl in zip(_pair(m.kernel_size), _pair(m.dilation), strict=True))
        spec = LayerSpec(d.op, len(in_labels), len(out_labels), _pair(m.kernel_size), _pair(m.stride), _pair(padding, fill=0), _pair(m.dilation), m.groups,
                         bias=m.bias is not None, activation=act, **common)
    elif d.op == "linear":
        # `batch` counts samples for every op (the table re-prices a layer at another batch by
        # replacing it); the rows each sample brings ride in `extra` (a channels-last MLP's H*W)
        rows = int(np.prod(d.in_shape[:-1])) if len(d.in_shape) > 1 else 1
        extra = (("rows_per_sample", rows // batch),) if rows != batch else ()
        spec = LayerSpec("linear", len(in_labels), len(out_labels), batch=batch, bias=m.bias is not None, activation=act, extra=extra)
    elif d.op in ("maxpool", "avgpool") and m is not None and hasattr(m, "kernel_size"):
        spec = LayerSpec(d.op, len(in_labels), len(out_labels), _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding, fill=0), **common)
    elif d.op in ("maxpool", "avgpool", "globalpool", "upsample"):
        op = "globalpool" if common["out_hw"] == (1, 1) else d.op
        if op in ("maxpool", "avgpool"):
            ih, iw = common["in_hw"]
            oh, ow = common["out_hw"]
            spec = LayerSpec(op, len(in_labels), len(out_labels), (max(ih // oh, 1), max(iw // ow, 1)), (max(ih // oh, 1), max(iw // ow, 1)), **common)
        else:
            spec = LayerSpec(op, len(in_labels), len(out_labels), **common)
    elif d.op in ("add", "mul"):
        spec = LayerSpec(d.op, len(out_labels), len(out_labels), n_inputs=int(d.extra.get("n_inputs", 2)), activation=act, **common)
    elif d.op == "concat":
        spec = LayerSpec("concat", len(in_labels), len(out_labels), n_inputs=int(d.extra.get("n_inputs", len(d.in_labels))), **common)
    else:
        return None
    in_terms = _terms(in_labels if d.op not in ("add", "mul") else out_labels, groups, group_of_atom)
    out_terms = _terms(out_labels, groups, group_of_atom)
    in_groups = tuple(g for g, _, _ in in_terms if g)
    full = [pos for g, pos, width in in_terms if g]
    widths = [width for g, pos, width in in_terms if g]
    multiplier = full[0] // widths[0] if full and all(p == full[0] // widths[0] * w for p, w in zip(full, widths, strict=True)) else 1
    out_group = out_terms[0][0] if len(out_terms) == 1 and out_terms[0][0] and out_terms[0][1] == out_terms[0][2] else None
    return CostedLayer(d.name, spec, in_groups, out_group, max(multiplier, 1), in_terms, out_terms, d.name)
