"""The decision: which measured variant to deploy, and whether the build met what was asked.

Rules (the build's promise: never hand back something worse than what the user gave it):
- candidates are the variants measured at the primary batch; the original FP32 model is
  always one, so the worst a build can deploy is what the user brought;
- a variant outside the accuracy guard is not a candidate (unless --allow-accuracy-drop),
  nor an INT8 graph whose outputs disagree with FP32 when no labelled data was given;
- the fastest candidate at the primary batch wins, timed side by side; a variant that is
  not faster than a simpler one beyond the measured noise does not displace it (INT8 is
  deployed only where it was measured faster);
- the latency budget is judged on the measurement: the deployed variant over the original
  at the build's precision, with the measured noise as tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

#: order of "simplicity": on a tie within noise the earlier wins (fewer transformations).
SIMPLICITY = ("baseline-fp32", "baseline-fp16", "pruned-fp32", "pruned-fp16", "baseline-int8", "baseline-mixed", "pruned-int8", "pruned-mixed")


@dataclass(frozen=True)
class Candidate:
    name: str
    p50_ms: float
    accuracy: float | None
    #: why it may not deploy ("" when it may)
    excluded: str = ""


@dataclass
class Decision:
    deploy: str
    reason: str
    primary_batch: int
    candidates: list[dict[str, Any]] = field(default_factory=list)
    speedup_vs_fp32_original: float | None = None
    speedup_vs_original_at_precision: float | None = None
    accuracy_change: float | None = None
    noise: float = 0.0
    budget: dict[str, Any] | None = None
    guard: dict[str, Any] | None = None
    #: {"exit_code": 0 | 14 | 15, "why": ...}: what the build's exit code will be, and why
    verdict: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rank_key(name: str) -> int:
    return SIMPLICITY.index(name) if name in SIMPLICITY else len(SIMPLICITY)


def choose(candidates: list[Candidate], noise: float) -> tuple[str, str]:
    """The fastest allowed candidate; a simpler one wins unless beaten by more than `noise`."""
    allowed = [c for c in candidates if not c.excluded]
    if not allowed:
        raise ValueError("no candidate may deploy (the original FP32 model always may: a caller bug)")
    best = min(allowed, key=lambda c: c.p50_ms)
    # walk from the simplest: keep a simpler variant that is within noise of the fastest
    for c in sorted(allowed, key=lambda c: rank_key(c.name)):
        if c.p50_ms <= best.p50_ms * (1 + noise):
            if c.name == best.name:
                return c.name, f"fastest allowed variant at the primary batch ({c.p50_ms:.3f} ms p50)"
            return c.name, (f"within the measured noise (±{100 * noise:.0f}%) of the fastest, {best.name} "
                            f"({c.p50_ms:.3f} vs {best.p50_ms:.3f} ms p50), and simpler")
    return best.name, "fastest allowed variant"


def vouch_for_choice(candidates: list[Candidate], pick: Callable[[list[Candidate]], tuple[str, str]], pending: set[str],
                     check: Callable[[str], tuple[str, dict[str, Any]]]) -> tuple[list[Candidate], str, str, dict[str, dict[str, Any]]]:
    """(candidates, chosen, reason, checks): `pick`'s choice once every variant of `pending` (checks
    left to this point) that it chooses, or that is the fastest allowed, was checked: `check(name)`
    gives (why it may not deploy or "", what to record). Failed ones are excluded and the choice is
    made again. Why: a check that costs seconds is run only where its answer can change what
    deploys; a slower variant that nothing checked is never chosen."""
    checks: dict[str, dict[str, Any]] = {}
    name, reason = pick(candidates)
    while True:
        fastest = min((c for c in candidates if not c.excluded), key=lambda c: c.p50_ms).name
        due = [n for n in dict.fromkeys((name, fastest)) if n in pending and n not in checks]
        if not due:
            return candidates, name, reason, checks
        for variant in due:
            excluded, checks[variant] = check(variant)
            if excluded:
                candidates = [replace(c, excluded=excluded) if c.name == variant else c for c in candidates]
        name, reason = pick(candidates)


def guard_exclusion(accuracy: float | None, reference: float | None, max_drop: float | None) -> str:
    if max_drop is None or accuracy is None or reference is None:
        return ""
    drop = reference - accuracy
    if drop > max_drop:
        return f"loses {drop:.2f} points of accuracy (guard {max_drop:.2f})"
    return ""


def budget_reference(p50: dict[str, float], at_precision: str, fp32_original: str) -> str:
    """The variant a latency budget is measured against: what the user could deploy without
    pruning, i.e. the original at the build's precision, or the FP32 original where that measured
    faster. INT8 that does not pay must not let the unpruned FP32 model "meet" a pruning budget
    (MobileNetV3 on digits: FP32 original 1.6x faster than its INT8, exit 0 at --speedup 1.3)."""
    return min((at_precision, fp32_original), key=lambda name: p50[name])


def meets(measured_speedup: float, goal_speedup: float, noise: float) -> bool:
    """The noise may excuse a small miss, never a variant that measured no faster than the
    reference: a 1.08x budget with ±10% noise is not met by the original itself (1.00x)."""
    return measured_speedup >= goal_speedup * (1 - noise) and (goal_speedup <= 1.0 or measured_speedup > 1.0)


def budget_verdict(goal_speedup: float | None, measured_speedup: float | None, noise: float) -> dict[str, Any] | None:
    if goal_speedup is None:
        return None
    met = measured_speedup is not None and meets(measured_speedup, goal_speedup, noise)
    return {"goal_speedup": goal_speedup, "measured_speedup": measured_speedup, "noise": noise, "met": met}


def chance_level_warning(accuracy: float | None, num_classes: int | None) -> str | None:
    """A baseline near chance almost always means the data is not preprocessed as in training."""
    if accuracy is None or not num_classes or num_classes < 2:
        return None
    chance = 100.0 / num_classes
    if accuracy <= chance * 1.5 + 2.0:
        return (f"the original model scores {accuracy:.2f}% on the evaluation data, near chance ({chance:.1f}% for {num_classes} classes): "
                "the data is probably not normalised as in training; check --mean/--std (and the input range) before trusting any number here")
    return None


def delivers(name: str, p50: dict[str, float], reference: str, goal_speedup: float | None, noise: float, pruning_asked: bool, precision: str) -> bool:
    """Whether a variant delivers what the build was asked for: the latency budget when one was
    given (measured over the original at the build's precision), else a pruned model when pruning
    was asked, else the build's precision (INT8, or its mixed graph)."""
    if goal_speedup is not None:
        return meets(p50[reference] / p50[name], goal_speedup, noise)
    if pruning_asked:
        return name.startswith("pruned-")
    return name.endswith((f"-{precision}", "-mixed"))


def verdict(deployed: str, candidates: list[Candidate], reference: str, goal_speedup: float | None, noise: float,
            pruning_asked: bool, precision: str) -> tuple[int, str]:
    """(exit code, why). 0: the deployed variant delivers what was asked. 15: a variant that would
    have delivered it exists but the accuracy guard excluded it. 14: no measured variant met the
    latency budget. Deploying FP32 because INT8 measured slower is not a failure."""
    p50 = {c.name: c.p50_ms for c in candidates}
    if delivers(deployed, p50, reference, goal_speedup, noise, pruning_asked, precision):
        return 0, f"{deployed} delivers what was asked"
    lost = [c for c in candidates if c.excluded and delivers(c.name, p50, reference, goal_speedup, noise, pruning_asked, precision)]
    if lost:
        best = min(lost, key=lambda c: c.p50_ms)
        return 15, f"{best.name} would deliver it but {best.excluded}"
    if goal_speedup is not None:
        return 14, f"no measured variant reaches {goal_speedup:.2f}x"
    return 0, f"{deployed} is the best measured variant (the others were measured slower)"
