"""A table's stated spread (latency/stated_spread.py): resampled rounds and the fit's own miss."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from hadmc_deploy.latency.stated_spread import (
    agree_within,
    estimate_spread,
    measurement_spread,
    plan_spread,
    stated_spread,
)


def test_rounds_that_move_state_a_wider_spread_than_rounds_that_do_not():
    """The same fastest round, but rounds scattered up to 60% above it versus within 2%: resampling
    the scattered ones moves the expected fastest of 7 further."""
    tight = [1.00, 1.01, 1.02, 1.00, 1.01, 1.02, 1.01, 1.00, 1.02, 1.01]
    loose = [1.00, 1.45, 1.10, 1.60, 1.05, 1.30, 1.55, 1.20, 1.02, 1.40]
    assert estimate_spread(tight) < 0.01
    assert estimate_spread(loose) > 3 * estimate_spread(tight)
    assert estimate_spread([1.0] * 9) == 0.0
    assert estimate_spread([2.0]) == 0.0  # nothing to resample
    assert estimate_spread(loose) == estimate_spread(list(loose))  # seeded: the same table states the same spread


def test_a_plan_adds_its_rounds_and_the_fits_miss_in_quadrature():
    """Steady rounds and a fit 10% off its measured time: the plan's spread is the 10%; without
    recorded rounds (a table from before they were kept) nothing is stated."""
    row = {"plan": "full", "predicted_ms": 1.1, "measured_ms": 1.0, "round_ms": [1.0] * 7}
    assert plan_spread(row) == pytest.approx(0.1)
    loose = {**row, "round_ms": [1.00, 1.45, 1.10, 1.60, 1.05, 1.30, 1.55, 1.20, 1.02, 1.40]}
    assert plan_spread(loose) > plan_spread(row)
    assert plan_spread({"plan": "old", "predicted_ms": 1.1, "measured_ms": 1.0}) is None


def test_a_plan_left_out_of_the_fit_states_that_fits_miss():
    """Where the row carries the miss of a fit without the plan, the stated spread takes it and the
    measurement spread keeps the in-sample miss."""
    row = {"plan": "aligned50", "predicted_ms": 1.01, "measured_ms": 1.0, "held_out_error": 0.06, "round_ms": [1.0] * 7}
    table = SimpleNamespace(context=SimpleNamespace(fitted_on=[row]))
    assert plan_spread(row) == pytest.approx(0.06) and plan_spread(row, held_out=False) == pytest.approx(0.01)
    assert stated_spread(table) == pytest.approx(0.06) and measurement_spread(table) == pytest.approx(0.01)


def test_a_table_states_the_root_mean_square_of_its_plans():
    """Three steady plans the fit missed by 1, 2 and 3%: sqrt((1 + 4 + 9) / 3) = 2.16%; a plan with
    disturbed rounds widens it; no fit, no statement."""
    steady = [1.0] * 7
    rows = [{"plan": f"p{i}", "predicted_ms": 1.0 + d, "measured_ms": 1.0, "round_ms": steady} for i, d in enumerate((0.01, 0.02, 0.03))]
    table = SimpleNamespace(context=SimpleNamespace(fitted_on=rows))
    assert stated_spread(table) == pytest.approx(math.sqrt(14 / 3) / 100)
    disturbed = {"plan": "disturbed", "predicted_ms": 1.0, "measured_ms": 1.0, "round_ms": [1.0, 2.0, 1.1, 1.9, 1.2, 1.8, 1.5]}
    assert stated_spread(SimpleNamespace(context=SimpleNamespace(fitted_on=[*rows, disturbed]))) > stated_spread(table)
    assert stated_spread(SimpleNamespace(context=None)) is None
    json.dumps(rows)  # the rows as a table file holds them


def test_two_predictions_agree_when_their_intervals_overlap():
    assert agree_within(1.00, 0.03, 1.05, 0.03)  # 1.03 and 1.0185 overlap
    assert not agree_within(1.00, 0.01, 1.05, 0.01)
    assert agree_within(1.00, 0.0, 1.00, 0.0)
