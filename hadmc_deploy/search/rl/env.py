"""AMC-style compression environment: one decision per prunable channel group, in graph order.

Why a hand-written environment and not a gymnasium one: the agents here are
compact PyTorch implementations driven by `runner.py`, and the only thing a
gymnasium wrapper would add is an optional dependency. The interface is the
usual `reset() -> state`, `step(action) -> (state, reward, done, info)`.

The latency budget is met BY CONSTRUCTION, as in AMC (He et al., 2018): before a
group's width is applied, it is clipped to the widest aligned choice whose
predicted latency still fits, assuming every later group at its floor width and
its cheapest precision. That configuration was feasible at the previous step,
so a feasible choice always exists and the final plan never exceeds the budget
(`reset` refuses a budget that even the all-floor plan cannot meet).

The joint variant (HAD-MC 2.0) also picks a precision per step for the
quantizable layers the group sizes (layers whose output width it sets; layers
with a fixed output, like the classifier, go to the group that sizes their
input). Each precision is costed by the latency model through `LayerSpec.precision`.

Long because the environment's state encoding, action clipping that keeps the budget by
construction, and the step/reset cycle belong to one Gym-style object.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hadmc_deploy.errors import BudgetError, GraphError, UsageError
from hadmc_deploy.graph.types import DependencyGraph

#: op kinds whose precision the quantization agent may change.
QUANTIZABLE_OPS = ("conv", "dwconv", "gconv", "convtranspose", "linear")
#: op-kind one-hot used in the state (everything else falls into "other").
_OP_KINDS = ("conv", "dwconv", "gconv", "linear")

#: a candidate: kept width per group id, precision per costed-layer name.
Candidate = tuple[dict[str, int], dict[str, str]]
RewardFn = Callable[[dict[str, int], dict[str, str]], float]


@dataclass(frozen=True)
class StepInfo:
    """What the environment did with one action (the applied values, after clipping)."""

    group_id: str
    wanted_keep: int
    keep: int
    precision: str | None
    clipped: bool
    precision_overridden: bool


@dataclass
class _Step:
    group_id: str
    width: int
    floor: int
    choices: list[int]  # allowed kept widths, ascending; always ends with `width`
    owned_layers: list[int] = field(default_factory=list)  # layers this step sets the precision of
    cost_layers: list[int] = field(default_factory=list)  # layers counted as "spent" after this step


def allowed_widths(width: int, align: int, floor: int) -> list[int]:
    """Multiples of `align` in [floor, width], plus `width` itself (keeping all is always allowed)."""
    out = [w for w in range(align, width + 1, align) if w >= floor]
    if not out or out[-1] != width:
        out.append(width)
    return out


class CompressionEnv:
    """Layer-by-layer pruning (and optionally precision) decisions under a latency budget.

    `reward_fn(keep, precision)` scores a finished candidate (higher is better:
    the accuracy after BN recalibration, see `reward.py`); results are cached so
    a plan the agent revisits costs nothing. `latency_weight` subtracts
    `latency_weight * predicted_ms / baseline_ms` from the reward.
    """

    def __init__(
        self,
        graph: DependencyGraph,
        scores: dict[str, np.ndarray],
        latency_model: Any,
        budget_ms: float,
        reward_fn: RewardFn,
        *,
        round_to: int = 1,
        floor_ratio: float = 0.1,
        precisions: tuple[str, ...] = (),
        latency_weight: float = 0.0,
        options: dict[str, list[int]] | None = None,
    ) -> None:
        if not graph.prunable_groups:
            raise GraphError("the dependency graph has no prunable channel group", hint="nothing for the RL search to decide")
        if not (0.0 < floor_ratio <= 1.0):
            raise UsageError(f"floor ratio must be in (0, 1], got {floor_ratio}")
        self.graph = graph
        self.latency_model = latency_model
        self.budget_ms = float(budget_ms)
        self.reward_fn = reward_fn
        self.latency_weight = latency_weight
        self.precisions = tuple(precisions)
        self.joint = len(self.precisions) > 1
        self._layer_base = [layer.spec for layer in graph.layers]
        self._steps = self._build_steps(graph, round_to, floor_ratio, options)
        if not self._steps:
            raise GraphError("no channel group has a width choice at this alignment", hint="lower round_to or the width floor")
        self._step_index = {s.group_id: i for i, s in enumerate(self._steps)}
        self._assign_layers()
        self._latency_cache: dict[tuple, tuple[float, list[float]]] = {}
        self.reward_cache: dict[tuple, float] = {}
        self.baseline_ms = self._predict(self._full_keep(), self._default_prec())[0]
        self._floor_prec = self._cheapest_floor_precisions()
        self.floor_ms = self._predict(self._floor_keep(), self._floor_prec)[0]
        self._static = self._static_features(scores)
        self.state_dim = self._static.shape[1] + 6
        self._t = 0
        self._keep: list[int] = []
        self._prec: list[str] = []
        self._last_ratio = 1.0
        self._last_int8 = 0.0

    # -- construction ---------------------------------------------------------------
    @staticmethod
    def _build_steps(graph: DependencyGraph, round_to: int, floor_ratio: float, options: dict[str, list[int]] | None) -> list[_Step]:
        """One step per prunable group with more than one allowed width.

        `options` (group id -> allowed kept counts) lets the caller share the
        knapsack's choices (`hadmc_deploy.search.build_problem`), so every search
        picks from the same menu; groups missing from it stay at full width.
        """
        steps = []
        for g in graph.prunable_groups:
            if options is not None:
                if g.id not in options:
                    continue
                choices = sorted(set(int(w) for w in options[g.id]))
            else:
                align = math.lcm(max(round_to, 1), max(g.granularity, 1))
                raw_floor = max(g.min_width, math.ceil(floor_ratio * g.width), 1)
                floor = min(g.width, align * math.ceil(raw_floor / align))
                choices = allowed_widths(g.width, align, floor)
            if len(choices) > 1:
                steps.append(_Step(g.id, g.width, choices[0], choices))
        return steps

    def _assign_layers(self) -> None:
        """Each costed layer belongs to the step of its output group, else of its first input group."""
        self._layer_owner: list[int | None] = []
        for i, layer in enumerate(self.graph.layers):
            owner = self._step_index.get(layer.out_group) if layer.out_group else None
            if owner is None:
                owner = next((self._step_index[g] for g in layer.in_groups if g in self._step_index), None)
            self._layer_owner.append(owner)
            if owner is not None:
                self._steps[owner].cost_layers.append(i)
                if self.joint and layer.spec.op in QUANTIZABLE_OPS:
                    self._steps[owner].owned_layers.append(i)

    def _full_keep(self) -> list[int]:
        return [s.width for s in self._steps]

    def _floor_keep(self) -> list[int]:
        return [s.floor for s in self._steps]

    def _default_prec(self) -> list[str]:
        return [self.precisions[0] if self.joint else "" for _ in self._steps]

    def _cheapest_floor_precisions(self) -> list[str]:
        """Per step, the precision with the lowest predicted latency at floor widths (greedy, in order)."""
        prec = self._default_prec()
        if not self.joint:
            return prec
        floor = self._floor_keep()
        for i, step in enumerate(self._steps):
            if not step.owned_layers:
                continue
            best = min(self.precisions, key=lambda p, i=i: self._predict(floor, prec[:i] + [p] + prec[i + 1 :])[0])
            prec[i] = best
        return prec

    # -- latency ----------------------------------------------------------------------
    def _predict(self, keep: list[int], prec: list[str]) -> tuple[float, list[float]]:
        key = (tuple(keep), tuple(prec))
        hit = self._latency_cache.get(key)
        if hit is not None:
            return hit
        widths = {s.group_id: k for s, k in zip(self._steps, keep, strict=True)}
        specs = self.graph.layer_specs(widths)
        layer_prec = self.layer_precisions(prec)
        specs = [replace(spec, precision=p) if p and p != spec.precision else spec for spec, p in zip(specs, layer_prec, strict=True)]
        pred = self.latency_model.predict(specs)
        total = float(pred.total_ms)
        if not math.isfinite(total):
            raise UsageError(f"the latency model predicted {total} ms", hint="check the latency table")
        hit = (total, [float(v) for v in pred.per_layer_ms])
        self._latency_cache[key] = hit
        return hit

    def layer_precisions(self, step_prec: list[str]) -> list[str]:
        """Per costed layer, the precision its step chose ("" = leave the spec as it is)."""
        out = [""] * len(self.graph.layers)
        for step, p in zip(self._steps, step_prec, strict=False):
            for i in step.owned_layers:
                out[i] = p
        return out

    def _layer_name(self, i: int) -> str:
        """The module a costed layer comes from (precision plans are keyed by module name)."""
        layer = self.graph.layers[i]
        return getattr(layer, "module", "") or layer.name

    def predicted_ms(self, keep: dict[str, int], precision: dict[str, str] | None = None) -> float:
        """Predicted latency of a finished candidate (as returned by `candidate()`)."""
        keep_list = [keep.get(s.group_id, s.width) for s in self._steps]
        prec = self._default_prec()
        if precision:
            for i, step in enumerate(self._steps):
                names = [self._layer_name(j) for j in step.owned_layers]
                if names and names[0] in precision:
                    prec[i] = precision[names[0]]
        return self._predict(keep_list, prec)[0]

    # -- state --------------------------------------------------------------------------
    def _static_features(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Per step: position, op kind, widths, kernel, stride, spatial size, latency share, importance stats.

        Each column is min-max normalised over the steps (as AMC does), so the
        agent sees values in [0, 1] whatever the network's size.
        """
        per_layer = self._predict(self._full_keep(), self._default_prec())[1]
        total = max(sum(per_layer), 1e-12)
        all_scores = [np.abs(np.asarray(v, dtype=np.float64)) for v in scores.values() if len(v)]
        global_mean = float(np.mean(np.concatenate(all_scores))) if all_scores else 1.0
        rows = []
        for t, step in enumerate(self._steps):
            producers = [self.graph.layers[i] for i in range(len(self.graph.layers)) if self.graph.layers[i].out_group == step.group_id]
            spec = producers[0].spec if producers else self.graph.layers[step.cost_layers[0]].spec if step.cost_layers else None
            onehot = [0.0] * (len(_OP_KINDS) + 1)
            onehot[_OP_KINDS.index(spec.op) if spec is not None and spec.op in _OP_KINDS else -1] = 1.0
            in_ch = spec.in_channels if spec else 0
            kernel = spec.kernel[0] if spec else 1
            stride = spec.stride[0] if spec else 1
            hw = math.log2(max(spec.out_hw[0] * spec.out_hw[1], 1)) if spec else 0.0
            share = sum(per_layer[i] for i in step.cost_layers) / total
            s = np.abs(np.asarray(scores.get(step.group_id, np.ones(step.width)), dtype=np.float64))
            mean = float(s.mean()) / max(global_mean, 1e-12) if s.size else 0.0
            cv = float(s.std() / max(s.mean(), 1e-12)) if s.size else 0.0
            ordered = np.sort(s)[::-1]
            half = int(np.searchsorted(np.cumsum(ordered), 0.5 * ordered.sum())) + 1 if s.size and ordered.sum() > 0 else step.width
            rows.append([t, *onehot, in_ch, step.width, kernel, stride, hw, share, mean, cv, half / step.width])
        arr = np.asarray(rows, dtype=np.float64)
        lo, hi = arr.min(axis=0), arr.max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        norm = (arr - lo) / span
        # one-hots and ratios already live in [0, 1]; keep them as they are.
        raw_cols = list(range(1, 1 + len(_OP_KINDS) + 1)) + [arr.shape[1] - 4, arr.shape[1] - 1]
        norm[:, raw_cols] = arr[:, raw_cols]
        return norm.astype(np.float32)

    def _state(self) -> np.ndarray:
        t = min(self._t, len(self._steps) - 1)
        keep = self._keep + self._floor_keep()[len(self._keep) :]
        prec = self._prec + self._floor_prec[len(self._prec) :]
        total, per_layer = self._predict(keep, prec)
        fixed = sum(v for i, v in enumerate(per_layer) if self._layer_owner[i] is None)
        spent = fixed + sum(per_layer[i] for s in self._steps[: self._t] for i in s.cost_layers)
        base = self.baseline_ms
        max_ratio = self._max_feasible(t, self._steps[t].width, self._floor_prec[t]) / self._steps[t].width if self._t < len(self._steps) else 0.0
        dynamic = [spent / base, (self.budget_ms - spent) / base, (total - spent) / base, max_ratio, self._last_ratio, self._last_int8]
        return np.concatenate([self._static[t], np.asarray(dynamic, dtype=np.float32)]).astype(np.float32)

    # -- episode ---------------------------------------------------------------------
    @property
    def n_steps(self) -> int:
        return len(self._steps)

    @property
    def steps(self) -> list[tuple[str, int, int]]:
        """(group id, width, floor) per step, in decision order."""
        return [(s.group_id, s.width, s.floor) for s in self._steps]

    def step_has_precision(self, t: int) -> bool:
        return self.joint and bool(self._steps[t].owned_layers)

    def reset(self) -> np.ndarray:
        if self.floor_ms > self.budget_ms * (1 + 1e-9):
            best = self.baseline_ms / self.floor_ms
            raise BudgetError(
                f"a budget of {self.budget_ms:.4f} ms cannot be met: every group at its floor width is predicted at {self.floor_ms:.4f} ms",
                hint=f"the best reachable speedup is {best:.2f}x; ask for less or lower the width floor",
            )
        self._t = 0
        self._keep, self._prec = [], []
        self._last_ratio, self._last_int8 = 1.0, 0.0
        return self._state()

    def _feasible(self, t: int, keep_t: int, prec_t: str) -> bool:
        keep = self._keep + [keep_t] + self._floor_keep()[t + 1 :]
        prec = self._prec + [prec_t] + self._floor_prec[t + 1 :]
        return self._predict(keep, prec)[0] <= self.budget_ms * (1 + 1e-9)

    def _max_feasible(self, t: int, upto: int, prec_t: str) -> int:
        """The widest allowed choice <= `upto` that still fits the budget (0 if none)."""
        for w in reversed(self._steps[t].choices):
            if w <= upto and self._feasible(t, w, prec_t):
                return w
        return 0

    def snap(self, t: int, ratio: float) -> int:
        """The allowed width nearest to `ratio * width` (the target's alignment)."""
        step = self._steps[t]
        want = float(np.clip(ratio, 0.0, 1.0)) * step.width
        return min(step.choices, key=lambda w: (abs(w - want), -w))

    def step(self, ratio: float, precision_index: int | None = None) -> tuple[np.ndarray, float, bool, StepInfo]:
        """Apply one group's keep ratio (and precision); the reward comes with the last step."""
        t = self._t
        if t >= len(self._steps):
            raise RuntimeError("step() after the episode ended; call reset()")
        step = self._steps[t]
        wanted = self.snap(t, ratio)
        prec = self._floor_prec[t]
        if self.step_has_precision(t) and precision_index is not None:
            prec = self.precisions[int(precision_index)]
        keep = self._max_feasible(t, wanted, prec)
        overridden = False
        if keep == 0:  # this precision cannot fit even at the floor: fall back to the cheapest one
            prec, overridden = self._floor_prec[t], True
            keep = self._max_feasible(t, wanted, prec)
        assert keep > 0, "invariant broken: the floor configuration was feasible at the previous step"
        self._keep.append(keep)
        self._prec.append(prec)
        self._t += 1
        self._last_ratio = keep / step.width
        self._last_int8 = 1.0 if prec == "int8" else 0.0
        info = StepInfo(step.group_id, wanted, keep, prec or None, keep != wanted, overridden)
        done = self._t == len(self._steps)
        reward = self._final_reward() if done else 0.0
        next_state = self._state() if not done else np.zeros(self.state_dim, dtype=np.float32)
        return next_state, reward, done, info

    def candidate(self) -> Candidate:
        """The finished episode's plan: kept width per group, precision per layer (joint only)."""
        keep = {s.group_id: k for s, k in zip(self._steps, self._keep, strict=True)}
        precision = {}
        if self.joint:
            for i, p in enumerate(self.layer_precisions(self._prec)):
                if p:
                    precision[self._layer_name(i)] = p
        return keep, precision

    def _final_reward(self) -> float:
        key = (tuple(self._keep), tuple(self._prec))
        if key not in self.reward_cache:
            keep, precision = self.candidate()
            value = float(self.reward_fn(keep, precision))
            if self.latency_weight:
                value -= self.latency_weight * self._predict(self._keep, self._prec)[0] / self.baseline_ms
            self.reward_cache[key] = value
        return self.reward_cache[key]

    def episode_predicted_ms(self) -> float:
        return self._predict(self._keep, self._prec)[0]
