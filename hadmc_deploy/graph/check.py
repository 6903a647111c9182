"""Zero-then-prune: the check that catches a wrong graph.

Channels chosen for removal are first made to contribute exactly nothing in the
original model (their producing weights, biases and norm affine parameters are
zeroed, so every tensor slice they occupy is 0 after the activation). Pruning
them must then leave the outputs unchanged: a wrong coupling or index mapping
cannot pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hadmc_deploy.evaluate import output_tensors
from hadmc_deploy.graph.align import uniform_plan_keep
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.surgery import apply, resolve_plan


@torch.no_grad()
def zero_removed(model: nn.Module, graph: DependencyGraph, kept: dict[str, list[int]]) -> None:
    index = {g.id: i for i, g in enumerate(graph.groups)}
    removed = {}
    for gid, idx in kept.items():
        mask = np.ones(graph.groups[index[gid]].width, dtype=bool)
        mask[idx] = False
        removed[index[gid]] = mask
    for ax in graph.axes:
        if ax.role != "out":
            continue
        module = model.get_submodule(ax.module) if ax.module else model
        t = getattr(module, ax.attr)
        for gi, mask in removed.items():
            pos = np.nonzero(ax.groups == gi)[0]
            sel = pos[mask[ax.classes[pos]]]
            if len(sel):
                t.index_fill_(ax.axis, torch.as_tensor(sel, dtype=torch.long), 0.0)


def max_output_diff(a: object, b: object) -> float:
    """Largest |a - b| over every tensor of two outputs of the same structure (inf if they differ in structure)."""
    left, right = output_tensors(a), output_tensors(b)
    if len(left) != len(right) or any(x.shape != y.shape for x, y in zip(left, right, strict=True)):
        return float("inf")
    return max((float((x - y).abs().max()) for x, y in zip(left, right, strict=True) if x.numel()), default=0.0)


@dataclass
class EquivalenceResult:
    max_abs_diff: float
    pruned: nn.Module
    plan: WidthPlan
    pruned_groups: int
    inexact_groups: int
    #: how much zeroing moved the output: a check whose zeroing changes nothing proves nothing
    zeroing_effect: float
    graph: DependencyGraph


def prune_equivalence(
    model: nn.Module,
    input_shape: tuple[int, ...],
    ratio: float,
    seed: int = 0,
    round_to: int = 1,
    graph: DependencyGraph | None = None,
) -> EquivalenceResult:
    """Zero-then-prune `ratio` of every exactly-prunable group, with random channel choices."""
    model = copy.deepcopy(model).eval()
    graph = graph or trace(model, input_shape)
    rng = np.random.default_rng(seed)
    scores = {g.id: rng.random(g.width) for g in graph.groups}
    plan = WidthPlan(keep=uniform_plan_keep(graph, ratio, round_to, exact_only=True))
    kept = resolve_plan(graph, plan, scores)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        original = model(x)
    zero_removed(model, graph, kept)
    with torch.no_grad():
        before = model(x)
        pruned, filled = apply(model, graph, WidthPlan(keep=plan.keep, indices=kept))
        after = pruned.eval()(x)
    diff = max_output_diff(before, after)
    effect = max_output_diff(original, before)
    return EquivalenceResult(diff, pruned, filled, len(kept), sum(1 for g in graph.groups if g.prunable and not g.exact), effect, graph)
