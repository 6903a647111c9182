"""Surgery: make a model genuinely narrower according to a `WidthPlan`.

Every tensor axis the graph tied to a group is sliced to the kept channels,
and module attributes (`in_channels`, `num_features`, `groups`, ...) are
rewritten from the new tensor shapes, so parameter counts and ONNX exports
reflect the smaller model. The original model is left untouched unless
`inplace=True`.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from hadmc_deploy.errors import GraphError
from hadmc_deploy.graph.types import ChannelGroup, DependencyGraph, WidthPlan


def select_channels(group: ChannelGroup, keep: int, scores: np.ndarray | None) -> list[int]:
    """The `keep` best channels of a group, honouring its cells (grouped convs, GroupNorm, splits)."""
    width = group.width
    s = np.zeros(width) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != width:
        raise GraphError(f"scores for group {group.id} have {len(s)} entries, the group has {width} channels")
    order = lambda idx: idx[np.argsort(-s[idx], kind="stable")]  # noqa: E731
    if not group.cells:
        return sorted(order(np.arange(width))[:keep].tolist())
    cells = np.asarray(group.cells)
    ids = list(dict.fromkeys(group.cells))
    if group.cell_mode == "blocks":
        block = width // len(ids)
        n_blocks = keep // block
        block_scores = np.array([s[cells == c].sum() for c in ids])
        best = np.argsort(-block_scores, kind="stable")[:n_blocks]
        return sorted(np.nonzero(np.isin(cells, [ids[b] for b in best]))[0].tolist())
    kept: list[int] = []
    for c in ids:
        members = np.nonzero(cells == c)[0]
        n = keep * len(members) // width
        kept += order(members)[:n].tolist()
    return sorted(kept)


def check_keep(group: ChannelGroup, keep: int) -> None:
    if keep > group.width or keep < 1:
        raise GraphError(f"group {group.id}: cannot keep {keep} of {group.width} channels")
    if keep == group.width:
        return
    if not group.prunable:
        raise GraphError(f"group {group.id} cannot be pruned: {group.reason}")
    if keep < group.min_width or keep % max(group.granularity, 1):
        raise GraphError(
            f"group {group.id}: keeping {keep} channels breaks its alignment (multiple of {group.granularity}, at least {group.min_width})",
            hint="round widths with hadmc_deploy.graph.align.round_width",
        )


def resolve_plan(graph: DependencyGraph, plan: WidthPlan, scores: dict[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    """Kept channel indices for every group the plan narrows."""
    kept: dict[str, list[int]] = {}
    known = {g.id: g for g in graph.groups}
    for gid in list(plan.keep) + list(plan.indices):
        if gid not in known:
            raise GraphError(f"the width plan names group {gid!r}, which this model does not have", hint="was the plan made for another architecture?")
    for group in graph.groups:
        if group.id in plan.indices:
            idx = sorted(int(i) for i in plan.indices[group.id])
            if len(set(idx)) != len(idx) or (idx and (idx[0] < 0 or idx[-1] >= group.width)):
                raise GraphError(f"plan indices for group {group.id} are out of range or repeated")
            check_keep(group, len(idx))
            if len(idx) < group.width:
                kept[group.id] = idx
            continue
        keep = int(plan.keep.get(group.id, group.width))
        check_keep(group, keep)
        if keep < group.width:
            kept[group.id] = select_channels(group, keep, (scores or {}).get(group.id))
    return kept


def _slice_axis(t: torch.Tensor, axis: int, mask: np.ndarray) -> torch.Tensor:
    return t.index_select(axis, torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long))


def apply(
    model: nn.Module,
    graph: DependencyGraph,
    plan: WidthPlan,
    *,
    scores: dict[str, np.ndarray] | None = None,
    inplace: bool = False,
) -> tuple[nn.Module, WidthPlan]:
    """A narrower copy of `model` (or `model` itself if `inplace`) and the plan with indices filled."""
    if scores is None and any(g.id not in plan.indices and plan.keep.get(g.id, g.width) < g.width for g in graph.groups):
        from hadmc_deploy.importance import score_groups

        scores = score_groups(model, graph, "l1")
    kept = resolve_plan(graph, plan, scores)
    new_model = model if inplace else copy.deepcopy(model)
    group_index = {g.id: i for i, g in enumerate(graph.groups)}
    kept_masks = {}
    for gid, idx in kept.items():
        mask = np.zeros(graph.groups[group_index[gid]].width, dtype=bool)
        mask[idx] = True
        kept_masks[group_index[gid]] = mask
    # per tensor: which slices survive along which axis
    cuts: dict[tuple[str, str], list[tuple[int, np.ndarray, object]]] = defaultdict(list)
    for ax in graph.axes:
        mask = np.ones(len(ax.groups), dtype=bool)
        for gi, gmask in kept_masks.items():
            sel = ax.groups == gi
            if sel.any():
                mask[sel] = gmask[ax.classes[sel]]
        if not mask.all():
            cuts[(ax.module, ax.attr)].append((ax.axis, mask, ax.buckets))
    with torch.no_grad():
        for (module_name, attr), axis_cuts in cuts.items():
            module = new_model.get_submodule(module_name) if module_name else new_model
            _cut_tensor(module, attr, axis_cuts)
        touched = {m for m, _ in cuts}
        for module_name in touched:
            module = new_model.get_submodule(module_name) if module_name else new_model
            _fix_attributes(module, graph, module_name, kept_masks)
    keep = {g.id: len(kept[g.id]) if g.id in kept else g.width for g in graph.groups if g.prunable or g.id in kept}
    result = WidthPlan(keep=keep, indices={gid: list(idx) for gid, idx in kept.items()}, meta=dict(plan.meta))
    return new_model, result


def _cut_tensor(module: nn.Module, attr: str, axis_cuts: list[tuple[int, np.ndarray, object]]) -> None:
    t = getattr(module, attr)
    is_param = isinstance(t, nn.Parameter)
    data = t.data if is_param else t
    out_mask = next((m for axis, m, b in axis_cuts if axis == 0), None)
    grouped = next(((m, b) for axis, m, b in axis_cuts if b is not None), None)
    if grouped is not None:
        data = _cut_grouped_conv(data, module.groups, out_mask, *grouped)
    else:
        for axis, mask, _ in axis_cuts:
            data = _slice_axis(data, axis, mask)
    if is_param:
        setattr(module, attr, nn.Parameter(data.clone(), requires_grad=t.requires_grad))
    else:
        module._buffers[attr] = data.clone()


def _cut_grouped_conv(w: torch.Tensor, groups: int, out_mask: np.ndarray | None, in_mask: np.ndarray, buckets: np.ndarray) -> torch.Tensor:
    """Weights of a grouped conv (out, in/groups, kh, kw): each kept output keeps its own group's kept inputs."""
    cin_g = w.shape[1]
    cout_g = w.shape[0] // groups
    out_idx = np.nonzero(out_mask)[0] if out_mask is not None else np.arange(w.shape[0])
    rows = []
    for o in out_idx:
        g = o // cout_g
        local = np.nonzero(in_mask[g * cin_g : (g + 1) * cin_g])[0]
        rows.append(w[o].index_select(0, torch.as_tensor(local, dtype=torch.long)))
    return torch.stack(rows)


def _fix_attributes(module: nn.Module, graph: DependencyGraph, name: str, kept_masks: dict[int, np.ndarray]) -> None:
    """Module attributes follow the new tensor shapes (what export and repr read)."""
    if isinstance(module, nn.ConvTranspose2d):
        module.in_channels = module.weight.shape[0]
        module.out_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        old_in, old_out, old_groups = module.in_channels, module.out_channels, module.groups
        module.out_channels = module.weight.shape[0]
        if old_groups > 1 and old_groups == old_in and module.weight.shape[1] == 1:
            # depthwise, with a channel multiplier old_out // old_in: groups follow the input channels
            module.groups = module.out_channels // max(old_out // old_in, 1)
            module.in_channels = module.groups
        else:
            module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm1d, nn.InstanceNorm2d)):
        ref = module.weight if module.weight is not None else module.running_mean
        module.num_features = ref.shape[0]
    elif isinstance(module, nn.GroupNorm):
        block = module.num_channels // module.num_groups
        module.num_channels = module.weight.shape[0]
        module.num_groups = module.num_channels // block
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (module.weight.shape[0],)
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
