"""The closed loop's round logic (build/pipeline.py `plan_rounds`) on scripted measurements:
when it searches again, and which plan it ends on. The real timing loop is in test_closed_loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hadmc_deploy.build import pipeline
from hadmc_deploy.build.correction import PlanLoop
from hadmc_deploy.ui import quiet_ui


def _run(monkeypatch: pytest.MonkeyPatch, measured: list[float], goal: float = 2.0, noise: float = 0.1, rounds: int = 3,
         plans: list[int] | None = None) -> tuple[list[dict], SimpleNamespace, list[str]]:
    """Scripted rounds: the search returns plan `plans[i]` (default: a new one each round), the
    check measures the next scripted speedup. Returns (rounds, ctx, the stage names run)."""
    script, plan_ids = iter(measured), iter(plans or range(1, 100))
    ctx = SimpleNamespace(settings=SimpleNamespace(search=SimpleNamespace(budget_rounds=rounds)), results={}, loop=PlanLoop(), ui=quiet_ui())
    history: dict[int, float] = {}  # plan id -> its measured speedup
    ran: list[str] = []

    def fake_stages(ctx: SimpleNamespace, stages: list) -> None:
        names = [s.name for s in stages]
        ran.extend(names)
        if "search" in names:
            forced = ctx.loop.forced_plan
            keep = forced if forced is not None else {"g": next(plan_ids)}
            ctx.results["search"] = {"keep": keep, "predicted_speedup": goal, "uncorrected": {}}
        if "latency check" in names:
            g = ctx.results["search"]["keep"]["g"]
            m = history[g] if ctx.loop.forced_plan is not None else next(script)
            history[g] = m
            ctx.results["latency check"] = {"checked": True, "measured_speedup": m, "goal_speedup": goal, "met": m >= goal * (1 - noise)}

    monkeypatch.setattr(pipeline, "run_stages", fake_stages)
    return pipeline.plan_rounds(ctx), ctx, ran


def test_a_meet_ends_the_loop_also_within_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the noise is met, as the decide stage judges it: searching again for a clear margin
    pruned a ResNet-18 further, and its INT8 graph then failed the accuracy guard (see pipeline.py)."""
    rounds, _, _ = _run(monkeypatch, [1.85])
    assert [r["round"] for r in rounds] == [1]


def test_a_miss_searches_again_with_the_correction(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, ctx, _ = _run(monkeypatch, [1.5, 2.1])
    assert [r["round"] for r in rounds] == [1, 2]
    assert ctx.results["latency check"]["measured_speedup"] == 2.1


def test_rounds_that_all_miss_end_on_the_fastest_measured_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, ctx, _ = _run(monkeypatch, [1.7, 1.5, 1.6])
    assert [r["round"] for r in rounds] == [1, 2, 3, "final"]
    assert rounds[-1]["reused_round"] == 1 and ctx.results["latency check"]["measured_speedup"] == 1.7


def test_a_plan_chosen_again_is_not_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-timing the same widths until a reading passes would select noise, not a plan."""
    rounds, ctx, ran = _run(monkeypatch, [1.5], plans=[1, 1])
    assert [r["round"] for r in rounds] == [1, 2] and "round 1's plan again" in rounds[1]["stopped"]
    assert ran.count("latency check") == 1  # measured once; and round 1's results are what the build holds
    assert ctx.results["latency check"]["measured_speedup"] == 1.5


def test_the_best_earlier_plan_is_rebuilt_only_when_the_build_no_longer_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, ctx, ran = _run(monkeypatch, [1.7, 1.5], plans=[1, 2, 1])
    assert [r["round"] for r in rounds] == [1, 2, 3, "final"] and rounds[-1]["reused_round"] == 1
    assert ran.count("latency check") == 3 and ctx.results["latency check"]["measured_speedup"] == 1.7
