"""Rewards for the RL search: how good is a candidate plan, measured fast.

`AccuracyReward` is the real one (AMC's recipe): cut the model with the same
surgery every search uses, re-estimate BatchNorm statistics on a few training
batches (no fine-tuning, so one candidate costs a couple of forward passes),
and take top-1 accuracy on a held-out validation subset. Layers the joint agent
puts in INT8 are simulated with fake quantization (per-output-channel symmetric
weights, per-tensor symmetric activations from a min/max pass), so choosing
INT8 can cost accuracy as it would on the backend; it is a simulation, not the
backend's kernels, and says so in its name.

`ImportanceProxyReward` needs no data: the share of channel importance a plan
keeps. It exists for tests and synthetic graphs and is labelled as a proxy.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.recover import recalibrate_bn
from hadmc_deploy.surgery import apply as surgery_apply


def _fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


@torch.no_grad()
def simulate_int8(model: nn.Module, layer_names: list[str], calib: torch.Tensor) -> list[Any]:
    """Fake-quantize the named conv/linear layers in place; returns the hooks (kept alive by the model)."""
    modules = dict(model.named_modules())
    targets = [modules[n] for n in layer_names if isinstance(modules.get(n), (nn.Conv2d, nn.Linear, nn.ConvTranspose2d))]
    for m in targets:
        w = m.weight
        axis = 1 if isinstance(m, nn.ConvTranspose2d) else 0
        amax = w.abs().amax(dim=[d for d in range(w.dim()) if d != axis], keepdim=True).clamp_min(1e-12)
        w.copy_(_fake_quant(w, amax / 127.0))
    amax_in: dict[nn.Module, float] = {}

    def observe(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        amax_in[module] = max(amax_in.get(module, 0.0), float(inputs[0].abs().max()))

    handles = [m.register_forward_pre_hook(observe) for m in targets]
    model(calib)
    for h in handles:
        h.remove()

    def quantize(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        scale = torch.tensor(max(amax_in.get(module, 1.0), 1e-12) / 127.0)
        return (_fake_quant(inputs[0], scale), *inputs[1:])

    return [m.register_forward_pre_hook(quantize) for m in targets]


class AccuracyReward:
    """Top-1 accuracy (fraction) of a candidate after surgery + BN recalibration, no fine-tuning."""

    name = "val-accuracy after BN recalibration"

    def __init__(
        self,
        model: nn.Module,
        graph: DependencyGraph,
        scores: dict[str, np.ndarray],
        val: ArrayDataset,
        calib: ArrayDataset,
        *,
        recal_batches: int = 4,
        batch_size: int = 128,
        orders: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.graph = graph
        self.scores = scores
        self.val = val
        self.calib = calib
        self.recal_batches = recal_batches
        self.batch_size = batch_size
        #: per group, channel indices most important first (the search's ranking), so the
        #: candidate scored here keeps exactly the channels the final plan will keep.
        self.orders = orders or {}
        self.evaluations = 0

    @torch.no_grad()
    def __call__(self, keep: dict[str, int], precision: dict[str, str]) -> float:
        self.evaluations += 1
        indices = {g: sorted(int(i) for i in self.orders[g][:k]) for g, k in keep.items() if g in self.orders}
        plan = WidthPlan(keep=dict(keep), indices=indices)
        pruned, _ = surgery_apply(copy.deepcopy(self.model), self.graph, plan, scores=self.scores, inplace=True)
        recalibrate_bn(pruned, self.calib, batches=self.recal_batches, batch_size=self.batch_size)
        int8_layers = [name for name, p in precision.items() if p == "int8"]
        if int8_layers:
            simulate_int8(pruned, int8_layers, torch.from_numpy(self.calib.x[: self.batch_size]))
        pruned.eval()
        correct = 0
        for xb, yb in self.val.batches(256):
            correct += int((pruned(torch.from_numpy(xb)).argmax(1).numpy() == yb).sum())
        return correct / max(len(self.val), 1)


class ImportanceProxyReward:
    """Mean over groups of the importance share a plan keeps (top channels first); no data needed.

    A proxy, not accuracy: good for tests and for graphs without a model at hand.
    """

    name = "importance proxy (no validation data)"

    def __init__(self, scores: dict[str, np.ndarray]) -> None:
        self._cumulative = {}
        for gid, s in scores.items():
            ordered = np.sort(np.abs(np.asarray(s, dtype=np.float64)))[::-1]
            total = ordered.sum()
            self._cumulative[gid] = np.cumsum(ordered) / total if total > 0 else np.linspace(0, 1, len(ordered) + 1)[1:]

    def __call__(self, keep: dict[str, int], precision: dict[str, str]) -> float:
        shares = [float(self._cumulative[g][k - 1]) for g, k in keep.items() if g in self._cumulative and k > 0]
        return float(np.mean(shares)) if shares else 0.0
