"""The context fit's test of its own plans: a plan whose whole-model time and profile disagree is
named (latency/context.inconsistent_plans) and timed again (context_measure.measure_plans)."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.auto import MeasureOptions, measure_table
from hadmc_deploy.latency.context import SELF_FIT_TOLERANCE, fit_measured, inconsistent_plans, self_fit_error
from hadmc_deploy.latency.context_measure import measure_plans
from hadmc_deploy.latency.context_plans import calibration_plans, context_step
from hadmc_deploy.latency.measure import get_backend
from hadmc_deploy.models.demo import demo_cnn
from hadmc_deploy.targets import get_target
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS


def _measured(tmp_path, recheck=None):  # noqa: ANN001, ANN202
    """The demo CNN at 1x1x28x28, a quick FP32 table and its context plans measured (real sessions)."""
    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    opts = MeasureOptions(grid_points=2, passes=1, runs_per_pass=1, context=False)
    table, _ = measure_table(model, graph, shape, get_target("cpu"), "fp32", 1, tmp_path / "t.json", options=opts)
    step = context_step(table)
    plans = calibration_plans(graph, step)
    measured = measure_plans(table, model, graph, shape, get_backend("onnxruntime"), plans=plans, rounds=1, runs=2, exporter="fast", recheck=recheck)
    return table, graph, step, measured


def test_a_plan_whose_whole_model_time_disagrees_with_its_profile_is_named(tmp_path):
    """A plan's whole-model time tripled (as a disturbed minute would) leaves the fit unable to price
    it near what it measured: `inconsistent_plans` names it, and leaves the table unfitted."""
    table, graph, step, measured = _measured(tmp_path)
    before = set(inconsistent_plans(table, graph, measured, step))
    disturbed = next(n for n in measured.plans if n != "full" and n not in before)
    bad = copy.deepcopy(measured)
    bad.model_ms[disturbed] *= 3.0
    bad.rows[disturbed]["measured_ms"] *= 3.0
    named = inconsistent_plans(table, graph, bad, step)
    assert disturbed in named
    assert table.context is None
    fit = fit_measured(replace(table), graph, bad, step)
    row = next(r for r in fit.fitted_on if r["plan"] == disturbed)
    assert self_fit_error(row) > SELF_FIT_TOLERANCE


def test_the_plans_a_recheck_names_are_timed_again_and_their_rounds_kept(tmp_path):
    """measure_plans asks `recheck` after measuring; the plan it names gets another profile round
    and WHOLE_MODEL_ROUNDS more whole-model rounds, added to its earlier ones; the others none."""
    calls = []

    def recheck(m):  # noqa: ANN001, ANN202
        calls.append({n: r["model_rounds"] for n, r in m.rows.items()})
        return ["full"] if len(calls) == 1 else []

    _, _, _, measured = _measured(tmp_path, recheck=recheck)
    assert len(calls) == 2
    first = calls[0]
    assert measured.rows["full"]["rechecks"] == 1
    assert measured.rows["full"]["model_rounds"] == first["full"] + WHOLE_MODEL_ROUNDS
    others = [n for n in measured.plans if n != "full"]
    assert all(measured.rows[n]["rechecks"] == 0 and measured.rows[n]["model_rounds"] == first[n] for n in others)
    # every round is recorded, rechecks' too: the table's stated spread resamples them
    assert all(len(r["round_ms"]) == r["model_rounds"] and min(r["round_ms"]) > 0 for r in measured.rows.values())


def test_the_summary_names_the_worst_plan_and_the_ones_timed_again():
    """What the build's report reads: the plan the fit priced furthest from its time, and which were rechecked."""
    from hadmc_deploy.latency.context import context_fit_summary

    rows = [{"plan": "full", "predicted_ms": 1.0, "measured_ms": 1.0, "rechecks": 0},
            {"plan": "aligned30", "predicted_ms": 0.5, "measured_ms": 0.4, "rechecks": 2},
            {"plan": "offgrid45", "predicted_ms": 0.9, "measured_ms": 1.0}]
    summary = context_fit_summary(rows)
    assert summary["worst_plan"] == "aligned30" and summary["worst_error"] == 0.25
    assert summary["rechecked"] == ["aligned30"] and summary["tolerance"] == SELF_FIT_TOLERANCE
    assert self_fit_error(rows[2]) == pytest.approx(0.1)
    assert context_fit_summary([])["worst_plan"] is None


def test_each_plan_but_the_full_model_is_priced_by_a_fit_without_it(tmp_path):
    """held_out_errors: every profiled plan but the full model gets the miss of a fit on the others
    (the table itself left unfitted); a plan whose whole-model time tripled is missed by about 2/3."""
    from hadmc_deploy.latency.context import held_out_errors

    table, graph, step, measured = _measured(tmp_path)
    errors = held_out_errors(table, graph, measured, step)
    assert set(errors) == set(measured.plans) - {"full"} and all(0.0 <= e < 10.0 for e in errors.values())
    assert table.context is None
    disturbed = next(n for n in errors if errors[n] < 0.3)
    bad = copy.deepcopy(measured)
    bad.model_ms[disturbed] *= 3.0
    assert held_out_errors(table, graph, bad, step)[disturbed] > 0.5
