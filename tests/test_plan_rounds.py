"""The closed loop's round logic (build/pipeline.py `plan_rounds`) on scripted measurements:
when it searches again, and which plan it ends on. The real timing loop is in test_closed_loop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hadmc_deploy.build import pipeline
from hadmc_deploy.build.correction import PlanLoop
from hadmc_deploy.ui import quiet_ui


def _run(monkeypatch: pytest.MonkeyPatch, measured: list[float], goal: float = 2.0, noise: float = 0.1, rounds: int = 3) -> tuple[list[dict], SimpleNamespace]:
    script = iter(measured)
    ctx = SimpleNamespace(settings=SimpleNamespace(search=SimpleNamespace(budget_rounds=rounds)), results={}, loop=PlanLoop(), ui=quiet_ui())
    history: dict[int, float] = {}  # plan id -> its measured speedup

    def fake_stages(ctx: SimpleNamespace, stages: list) -> None:
        forced = ctx.loop.forced_plan
        if forced is not None:  # the best measured plan rebuilt: it measures as before
            keep, m = forced, history[forced["g"]]
        else:
            keep, m = {"g": len(history) + 1}, next(script)
            history[keep["g"]] = m
        ctx.results["search"] = {"keep": keep, "predicted_speedup": goal, "uncorrected": {}}
        ctx.results["latency check"] = {"checked": True, "measured_speedup": m, "goal_speedup": goal, "met": m >= goal * (1 - noise)}

    monkeypatch.setattr(pipeline, "run_stages", fake_stages)
    return pipeline.plan_rounds(ctx), ctx


def test_a_meet_ends_the_loop_also_within_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the noise is met, as the decide stage judges it: searching again for a clear margin
    pruned a ResNet-18 further, and its INT8 graph then failed the accuracy guard (see pipeline.py)."""
    rounds, _ = _run(monkeypatch, [1.85])
    assert [r["round"] for r in rounds] == [1]


def test_a_miss_searches_again_with_the_correction(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, ctx = _run(monkeypatch, [1.5, 2.1])
    assert [r["round"] for r in rounds] == [1, 2]
    assert ctx.results["latency check"]["measured_speedup"] == 2.1


def test_rounds_that_all_miss_end_on_the_fastest_measured_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds, ctx = _run(monkeypatch, [1.7, 1.5, 1.6])
    assert [r["round"] for r in rounds] == [1, 2, 3, "final"]
    assert rounds[-1]["reused_round"] == 1 and ctx.results["latency check"]["measured_speedup"] == 1.7
