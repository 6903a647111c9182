"""Plans that are given rather than searched (--widths, --ratio, --macs-ratio), priced by the
same latency model as a search so the report and the budget check treat them alike."""

from __future__ import annotations

from hadmc_deploy.errors import GraphError, UsageError
from hadmc_deploy.graph.align import uniform_plan_keep
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.search.base import GroupChange, SearchResult


def check_plan(graph: DependencyGraph, plan: WidthPlan) -> None:
    """A given plan names groups of this model with widths it can take."""
    groups = {grp.id: grp for grp in graph.groups}
    for gid, keep in plan.keep.items():
        if gid not in groups:
            raise UsageError(f"--widths names group {gid!r}, which this model does not have", hint=f"groups: {', '.join(groups)}")
        if not (1 <= keep <= groups[gid].width) or (keep != groups[gid].width and not groups[gid].prunable):
            raise UsageError(f"--widths keeps {keep} channels of group {gid!r} (width {groups[gid].width}, prunable: {groups[gid].prunable})")


def price_plan(graph: DependencyGraph, keep: dict[str, int], latency_model: object, method: str) -> SearchResult:
    """A SearchResult for a fixed plan: predicted latency, and what each group's change saves alone."""
    full = graph.full_widths()
    base = latency_model.predict(graph.layer_specs()).total_ms
    pred = latency_model.predict(graph.layer_specs(keep))
    changes = [
        GroupChange(gid, full[gid], k, base - latency_model.predict(graph.layer_specs({gid: k})).total_ms, float("nan"))
        for gid, k in keep.items()
        if k != full[gid]
    ]
    return SearchResult(
        plan=WidthPlan(keep=dict(keep)), predicted_ms=pred.total_ms, baseline_ms=base, budget_ms=pred.total_ms,
        method=method, source=pred.source, changes=changes, importance_kept=float("nan"), predictor_calls=len(changes) + 2,
    )


def _macs(graph: DependencyGraph, keep: dict[str, int]) -> int:
    return sum(spec.macs() for spec in graph.layer_specs(keep))


def keep_for_macs_ratio(graph: DependencyGraph, macs_ratio: float, round_to: int) -> dict[str, int]:
    """The uniform channel ratio whose (graph-predicted) MACs remove `macs_ratio` of the total."""
    goal = _macs(graph, {}) * (1.0 - macs_ratio)
    lo, hi = 0.0, 0.99
    best = uniform_plan_keep(graph, hi, round_to)
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = uniform_plan_keep(graph, mid, round_to)
        if _macs(graph, keep) <= goal:
            best, hi = keep, mid
        else:
            lo = mid
    if _macs(graph, best) > goal:
        raise GraphError(f"--macs-ratio {macs_ratio} cannot be reached: the prunable groups hold too few of the MACs", hint="ask for a smaller ratio")
    return best


def keep_for_ratio(graph: DependencyGraph, ratio: float, round_to: int) -> dict[str, int]:
    return uniform_plan_keep(graph, ratio, round_to)
