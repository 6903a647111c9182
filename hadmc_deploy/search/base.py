"""What every width-search method shares: the problem, the latency evaluator, the result.

A search sees three things: the channel groups (with their alignment and
floors), each group's per-channel importance, and a latency model. This module
turns them into a `SearchProblem` of per-group *options* (the kept counts a
group may take: multiples of its alignment from its floor up to its width, plus
the full width) with a retained-importance value per option, and a
`LatencyEvaluator` that costs width plans with the latency model. Methods
(knapsack, greedy, uniform) only pick one option per group.

Importance values. A group keeps its most important channels in order, so the
value of keeping `k` channels is the sum of its top-`k` scores. Raw scores are
not comparable across groups (an L1 norm grows with fan-in), so by default each
group's scores are divided by their mean and multiplied by the number of layers
that produce the group (a residual stream is written by every block of its
stage and carries all of their information). This is a documented heuristic;
`importance_norm="none"` uses the scores as given (e.g. Taylor scores, which
are already on a loss scale).

Long because it holds the search problem's data (options per group, the evaluator, the result)
that every search method shares, and the reachability check all of them run first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hadmc_deploy.errors import BudgetError, UsageError
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import UI

#: relative slack when comparing a prediction with the budget (float noise only).
BUDGET_RTOL = 1e-9


class LatencyPredictor(Protocol):
    def predict(self, specs: list[LayerSpec]) -> Any: ...  # -> Prediction(total_ms, per_layer_ms, source)


@dataclass
class GroupOptions:
    """One prunable group's choices: kept counts `options` (ascending) and their `values`."""

    id: str
    width: int
    floor: int
    step: int
    options: list[int]
    #: retained importance for each option (same order as `options`).
    values: np.ndarray
    #: channel indices sorted by importance, most important first.
    order: np.ndarray

    def value_of(self, keep: int) -> float:
        return float(self.values[self.options.index(keep)])

    def below(self, keep: int) -> int | None:
        """The next smaller option (one bundle less), or None at the floor."""
        i = self.options.index(keep)
        return self.options[i - 1] if i > 0 else None

    def above(self, keep: int) -> int | None:
        i = self.options.index(keep)
        return self.options[i + 1] if i + 1 < len(self.options) else None


class LatencyEvaluator:
    """Costs width plans with the latency model, in as few `predict` calls as it can.

    `total(widths)` is the full prediction (what the budget is checked against);
    `deltas(...)` prices many single-group changes at once, in one `predict`
    call over just the layers each change touches, so methods can ask for
    whole latency curves cheaply. Deltas are sums of per-layer predictions, so
    any constant per-model term of the predictor cancels out.
    """

    def __init__(self, graph: DependencyGraph, model: LatencyPredictor) -> None:
        self.graph = graph
        self.model = model
        self.calls = 0
        self._totals: dict[tuple[tuple[str, int], ...], float] = {}
        self.source = ""
        self._touching: dict[str, list[int]] = {}
        for i, layer in enumerate(graph.layers):
            for gid in {*layer.in_groups, *([layer.out_group] if layer.out_group else [])}:
                self._touching.setdefault(gid, []).append(i)

    def touching(self, group_id: str) -> list[int]:
        return self._touching.get(group_id, [])

    def _predict(self, specs: list[LayerSpec]) -> Any:
        self.calls += 1
        pred = self.model.predict(specs)
        self.source = getattr(pred, "source", self.source) or self.source
        return pred

    def total(self, widths: dict[str, int]) -> float:
        key = tuple(sorted(widths.items()))
        if key not in self._totals:
            self._totals[key] = float(self._predict(self.graph.layer_specs(widths)).total_ms)
        return self._totals[key]

    def per_layer(self, widths: dict[str, int]) -> list[float]:
        return [float(v) for v in self._predict(self.graph.layer_specs(widths)).per_layer_ms]

    def deltas(self, widths: dict[str, int], changes: list[tuple[str, int]]) -> np.ndarray:
        """Latency change (ms) of setting group g to k, all else as in `widths`, for each (g, k)."""
        merged = {**self.graph.full_widths(), **widths}
        specs: list[LayerSpec] = []
        spans: list[tuple[int, int]] = []
        base_index: dict[str, tuple[int, int]] = {}
        for gid in {g for g, _ in changes}:
            idx = self.touching(gid)
            start = len(specs)
            specs += [self.graph.layers[i].spec_at(merged) for i in idx]
            base_index[gid] = (start, len(specs))
        for gid, keep in changes:
            idx = self.touching(gid)
            start = len(specs)
            changed = {**merged, gid: keep}
            specs += [self.graph.layers[i].spec_at(changed) for i in idx]
            spans.append((start, len(specs)))
        if not specs:
            return np.zeros(len(changes))
        per = np.asarray(self._predict(specs).per_layer_ms, dtype=np.float64)
        out = np.empty(len(changes))
        for j, ((gid, _), (s, e)) in enumerate(zip(changes, spans, strict=True)):
            bs, be = base_index[gid]
            out[j] = per[s:e].sum() - per[bs:be].sum()
        return out


@dataclass
class SearchProblem:
    graph: DependencyGraph
    groups: list[GroupOptions]
    evaluator: LatencyEvaluator
    baseline_ms: float
    budget_ms: float
    #: widths of every group at the start (the unpruned model).
    full: dict[str, int]
    #: a plan known to meet the budget when the all-floors plan does not (latency is not
    #: monotonic in width: narrow INT8 layers can be slower); set by `check_reachable`.
    feasible_start: dict[str, int] | None = None
    #: every plan `check_reachable` found that meets the budget, fastest first: the search grows
    #: each back into the budget and keeps the one that retains the most importance
    feasible_starts: list[dict[str, int]] = field(default_factory=list)

    def floors(self) -> dict[str, int]:
        return {g.id: g.options[0] for g in self.groups}

    def value(self, widths: dict[str, int]) -> float:
        return float(sum(g.value_of(widths[g.id]) for g in self.groups))

    def total_value(self) -> float:
        return float(sum(g.values[-1] for g in self.groups))

    def fits(self, latency_ms: float) -> bool:
        return latency_ms <= self.budget_ms * (1 + BUDGET_RTOL)


@dataclass
class GroupChange:
    id: str
    before: int
    after: int
    #: predicted latency saved by this group's change alone, others at the final plan (ms).
    saved_ms: float
    importance_kept: float


@dataclass
class SearchResult:
    plan: WidthPlan
    predicted_ms: float
    baseline_ms: float
    budget_ms: float
    method: str
    source: str
    changes: list[GroupChange]
    #: share of the (normalised) importance the plan keeps, 0..1.
    importance_kept: float
    predictor_calls: int
    notes: list[str] = field(default_factory=list)

    @property
    def predicted_speedup(self) -> float:
        return self.baseline_ms / self.predicted_ms if self.predicted_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "latency_source": self.source,
            "baseline_ms": self.baseline_ms,
            "predicted_ms": self.predicted_ms,
            "budget_ms": self.budget_ms,
            "predicted_speedup": self.predicted_speedup,
            "importance_kept": self.importance_kept,
            "predictor_calls": self.predictor_calls,
            "groups": [c.__dict__ for c in self.changes],
            "keep": dict(self.plan.keep),
            "notes": list(self.notes),
        }

    def print_plan(self, ui: UI) -> None:
        """The plan as a rich table: per group, width before -> after, predicted latency saved."""
        from rich.table import Table

        table = Table(title=f"width plan ({self.method}, latency model: {self.source})", title_justify="left")
        table.add_column("group")
        table.add_column("width", justify="right")
        table.add_column("kept", justify="right")
        table.add_column("saved (ms)", justify="right")
        for c in self.changes:
            style = None if c.after != c.before else "dim"
            table.add_row(c.id, f"{c.before} -> {c.after}", f"{100 * c.after / c.before:.0f}%", f"{c.saved_ms:.4f}", style=style)
        ui.out.print(table)
        kept = "" if math.isnan(self.importance_kept) else f", importance kept {100 * self.importance_kept:.1f}%"  # a given plan has no scores
        ui.out.print(f"predicted {self.baseline_ms:.3f} ms -> {self.predicted_ms:.3f} ms ({self.predicted_speedup:.2f}x; budget {self.budget_ms:.3f} ms){kept}")
        for note in self.notes:
            ui.out.print(f"note: {note}")


SearchMethod = Callable[[SearchProblem, UI], dict[str, int]]


#: kept counts one group offers the search at most: beyond it the counts are taken every few
#: steps (still multiples of the step). The knapsack and its repair moves price every option with
#: the full predictor, so their cost grows with the square of the count: a ResNet-18 table whose
#: probe found no staircase (step 1: up to 512 counts per group) made one search take 280 s of a
#: build, against 0.8 s at the step of 16 it had found before; 64 options a group still took 39 s.
MAX_GROUP_OPTIONS = 32


def group_options(
    gid: str, width: int, scores: np.ndarray, *, step: int, min_width: int, min_keep_ratio: float, producers: int, importance_norm: str,
    max_options: int = MAX_GROUP_OPTIONS,
) -> GroupOptions:
    """The kept counts a group may take (at most `max_options`, multiples of `step`) and the importance each retains."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if scores.shape[0] != width:
        raise UsageError(f"importance scores for group {gid} have {scores.shape[0]} entries but the group has {width} channels")
    scores = np.where(np.isfinite(scores), np.maximum(scores, 0.0), 0.0)
    if importance_norm == "mean":
        mean = scores.mean()
        scores = (scores / mean if mean > 0 else np.ones_like(scores)) * max(producers, 1)
    elif importance_norm != "none":
        raise UsageError(f"unknown importance normalisation {importance_norm!r}", hint="use 'mean' or 'none'")
    # Stable sort so ties keep channel order: plans are reproducible.
    order = np.argsort(-scores, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(scores[order])])
    floor = max(min_width, math.ceil(min_keep_ratio * width), 1)
    floor = min(width, step * math.ceil(floor / step))
    stride = step * max(1, math.ceil((width - floor) / step / max(max_options - 1, 1)))
    options = list(range(floor, width, stride)) + [width] if floor < width else [width]
    options = sorted(set(options))
    return GroupOptions(
        id=gid,
        width=width,
        floor=options[0],
        step=step,
        options=options,
        values=np.array([cumulative[k] for k in options]),
        order=order,
    )


def resolve_budget(baseline_ms: float, speedup: float | None, latency_ms: float | None) -> float:
    if (speedup is None) == (latency_ms is None):
        raise UsageError("give exactly one latency budget", hint="--speedup S or --latency-ms T")
    if speedup is not None:
        if not (speedup >= 1.0 and math.isfinite(speedup)):
            raise UsageError(f"--speedup {speedup} must be a number >= 1", hint="e.g. --speedup 2")
        return baseline_ms / speedup
    assert latency_ms is not None
    if not (latency_ms > 0 and math.isfinite(latency_ms)):
        raise UsageError(f"--latency-ms {latency_ms} must be a positive number")
    return float(latency_ms)


#: width fractions of the uniform plans `fastest_plan` also descends from.
UNIFORM_STARTS = (0.75, 0.5, 0.3)


def _descend(problem: SearchProblem, widths: dict[str, int], passes: int) -> tuple[dict[str, int], float]:
    """Coordinate descent from `widths`: each group in turn takes its fastest option with the
    others fixed; a move is kept only when the whole plan's predicted total drops (a group's
    deltas price only the layers it touches)."""
    total = problem.evaluator.total(widths)
    for _ in range(passes):
        improved = False
        for g in problem.groups:
            changes = [(g.id, k) for k in g.options if k != widths[g.id]]
            if not changes:
                continue
            deltas = problem.evaluator.deltas(widths, changes)
            i = int(np.argmin(deltas))
            if deltas[i] < -1e-9:
                trial = {**widths, g.id: changes[i][1]}
                trial_total = problem.evaluator.total(trial)
                if trial_total < total - 1e-12:
                    widths, total, improved = trial, trial_total, True
        if not improved:
            break
    return widths, total


def fastest_plan(problem: SearchProblem, passes: int = 3) -> tuple[dict[str, int], float]:
    """The fastest plan found by coordinate descent from the floors, from full width and from
    uniform plans. Needed because the all-floors plan is not the fastest wherever narrower layers
    run slower (alignment staircases, INT8 kernels). Several starts because one can trap it: a layer runs in
    the fast blocked layout only when its input and its output counts are both aligned, so from
    floors that leave narrow groups off the step no single group's move pays (a ResNet-20 INT8
    table on an AMD EPYC: descent from the floors ended at 1.67 ms, 0.78x of the original's
    1.31 ms, where plans on the step measured 0.90-1.10 ms). From full width it never ends
    slower than the original; from uniform plans (`UNIFORM_STARTS`) it finds what one group at a
    time cannot reach (a MobileNetV2 table there: 1.18x from the other starts, 1.29x from half
    width)."""
    return min(descended_plans(problem, passes), key=lambda found: found[1])


def descended_plans(problem: SearchProblem, passes: int = 3) -> list[tuple[dict[str, int], float]]:
    """Where coordinate descent ends from each start of `fastest_plan` (see there): (widths, total)."""
    starts = [{**problem.full, **problem.floors()}, dict(problem.full)]
    # every group near one fraction of its width, on the widest groups' step where it can (a group
    # narrower than two steps may take any count): the uniform plans a table's context profiled
    unit = max((g.step for g in problem.groups), default=1)
    for frac in UNIFORM_STARTS:
        starts.append({**problem.full, **{g.id: min([k for k in g.options if k % unit == 0] or g.options, key=lambda k, g=g: abs(k - frac * g.width))
                                          for g in problem.groups}})
    return [_descend(problem, start, passes) for start in starts]


def check_reachable(problem: SearchProblem) -> None:
    """Stop early, naming the best reachable speedup, when no plan found meets the budget."""
    floors = {**problem.full, **problem.floors()}
    floors_ms = problem.evaluator.total(floors)
    ends = sorted(descended_plans(problem), key=lambda found: found[1])
    fitting = [w for w, total in sorted([*ends, (floors, floors_ms)], key=lambda found: found[1]) if problem.fits(total)]
    problem.feasible_starts = fitting
    if problem.fits(floors_ms):
        return
    widths, fastest_ms = ends[0]
    if problem.fits(fastest_ms):
        problem.feasible_start = widths
        return
    best = problem.baseline_ms / fastest_ms if fastest_ms > 0 else float("inf")
    if best < 1.005:
        raise BudgetError(
            f"the budget {problem.budget_ms:.3f} ms ({problem.baseline_ms / problem.budget_ms:.2f}x) cannot be met: no plan found within the width "
            f"floors is predicted faster than the original ({problem.baseline_ms:.3f} ms; the fastest found {fastest_ms:.3f} ms)",
            hint="pruning does not pay for this model on this target at this batch: deploy it without a budget, or try a larger --batch or a lower --min-keep-ratio",
            best_speedup=best,
        )
    raise BudgetError(
        f"the budget {problem.budget_ms:.3f} ms ({problem.baseline_ms / problem.budget_ms:.2f}x) cannot be met: "
        f"the fastest plan found within the width floors is predicted at {fastest_ms:.3f} ms, a best reachable speedup of {best:.2f}x",
        hint=f"ask for --speedup {math.floor(best * 100) / 100:.2f} or less, or lower --min-keep-ratio",
        best_speedup=best,
    )
