"""Channel importance, scored per group: which channels a pruned model should keep.

A criterion gives a statistic per slice of every tensor axis the graph tied to
channels (a conv's output filters, the next layer's input columns, BN scales);
each tensor's statistics are normalised by their mean (so a wide Linear and a
small BN do not drown each other) and summed per channel of the group.

Criteria (registry `CRITERIA`): l1, l2 (magnitude), bn (|gamma| of the norms;
groups without a norm fall back to l1), taylor (|w * dL/dw| over a few batches,
Molchanov et al. 2019), gradient (mean |dL/dw|, the seed report's sensitivity).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from hadmc_deploy.errors import DataError, UsageError
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.ui import UI, quiet_ui

NORM_TYPES = ("BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm")
#: per-slice statistic over (slices, rest) arrays of weight and gradient
SliceStat = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _l1(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return w.abs().sum(1)


def _l2(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return w.pow(2).sum(1).sqrt()


def _taylor(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return (w * g).abs().sum(1)


def _gradient(w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
    return g.abs().mean(1)


#: criterion -> (statistic, needs gradients, tensors it looks at)
CRITERIA: dict[str, tuple[SliceStat, bool, str]] = {
    "l1": (_l1, False, "weights"),
    "l2": (_l2, False, "weights"),
    "bn": (_l1, False, "norms"),
    "taylor": (_taylor, True, "weights"),
    "gradient": (_gradient, True, "weights"),
}


def _slices(t: torch.Tensor, axis: int, buckets: np.ndarray | None, groups: int) -> torch.Tensor:
    """(positions, rest): one row per position along `axis` (grouped-conv inputs: per conv group)."""
    if buckets is not None:
        cout, cin_g = t.shape[0], t.shape[1]
        per = t.reshape(groups, cout // groups, cin_g, -1).permute(0, 2, 1, 3)
        return per.reshape(groups * cin_g, -1)
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def _accumulate_gradients(model: nn.Module, data: Any, batches: int, batch_size: int, ui: UI) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training = model.training
    model.eval()  # BN running statistics must not move while scoring
    loss_fn = nn.CrossEntropyLoss()
    seen = 0
    try:
        for xb, yb in ui.track(list(data.batches(batch_size))[:batches], "importance (gradients)"):
            model.zero_grad(set_to_none=True)
            logits = model(torch.from_numpy(xb))
            if logits.dim() != 2 or int(yb.max()) >= logits.shape[1]:
                raise DataError(f"the model's output {tuple(logits.shape)} does not fit labels up to {int(yb.max())}", hint="score with data that matches the model")
            loss_fn(logits, torch.from_numpy(yb)).backward()
            for name, p in params.items():
                if p.grad is not None:
                    grads[name] += p.grad.detach()
            seen += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if seen == 0:
        raise DataError("the importance data has no samples")
    return {name: g / seen for name, g in grads.items()}


def score_groups(
    model: nn.Module,
    graph: DependencyGraph,
    criterion: str = "l1",
    data: Any = None,
    *,
    batches: int = 4,
    batch_size: int = 32,
    ui: UI | None = None,
) -> dict[str, np.ndarray]:
    """Per-channel scores (higher = more important) for every group of `graph`."""
    ui = ui or quiet_ui()
    if criterion not in CRITERIA:
        raise UsageError(f"unknown importance criterion {criterion!r}", hint=f"choose one of {', '.join(CRITERIA)}")
    stat, needs_grad, which = CRITERIA[criterion]
    grads: dict[str, torch.Tensor] = {}
    if needs_grad:
        if data is None:
            raise UsageError(f"importance {criterion!r} needs data to compute gradients", hint="pass --data SOURCE (e.g. builtin:fashion-mnist:train)")
        grads = _accumulate_gradients(model, data, batches, batch_size, ui)
    scores = {g.id: np.zeros(g.width) for g in graph.groups}
    has_norm = {g.id: False for g in graph.groups}
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())

    def add(ax: Any, kind: str) -> None:
        module = modules.get(ax.module, model) if ax.module else model
        t = getattr(module, ax.attr, None)
        if not isinstance(t, torch.Tensor) or ax.attr == "bias" or ax.role not in ("out", "in"):
            return
        is_norm = graph.module_types.get(ax.module, "") in NORM_TYPES
        if (kind == "norms") != is_norm:
            return
        g = grads.get(ax.tensor_name) if needs_grad else None
        if needs_grad and g is None:
            return
        groups = getattr(module, "groups", 1)
        with torch.no_grad():
            w = _slices(t.detach(), ax.axis, ax.buckets, groups)
            gs = _slices(g, ax.axis, ax.buckets, groups) if g is not None else None
            v = stat(w, gs).double().numpy()
        if len(v) != len(ax.groups):
            return
        v = v / (v.mean() + 1e-12)
        for gi in np.unique(ax.groups[ax.groups >= 0]):
            sel = ax.groups == gi
            gid = graph.groups[gi].id
            np.add.at(scores[gid], ax.classes[sel], v[sel])
            if kind == "norms":
                has_norm[gid] = True

    for ax in graph.axes:
        add(ax, which)
    if which == "norms":
        fallback = [gid for gid, ok in has_norm.items() if not ok]
        if fallback:
            l1 = score_groups(model, graph, "l1")
            for gid in fallback:
                scores[gid] = l1[gid]
    del params
    return scores
