"""tools/validate_latency_model.py: the context-fit plans it times again beside the random ones,
and how far their speedups moved since the fit (the cell's own measure of the machine's move);
tools/trace_thread_states.py: whether the random and the fit's plans moved together."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import trace_thread_states as tts  # noqa: E402
import validate_latency_model as vlm  # noqa: E402

from hadmc_deploy.latency.context_plans import calibration_plans  # noqa: E402


def _table(times: dict[str, float]):  # noqa: ANN202
    rows = [{"plan": name, "measured_ms": ms} for name, ms in times.items()]
    return SimpleNamespace(context=SimpleNamespace(step=16, fitted_on=rows))


@pytest.fixture(scope="module")
def grouped():
    return vlm.cell_model("grouped", 1)[2]


def test_fit_plans_are_spread_over_the_fits_times_and_never_the_full_model(grouped):
    names = [n for n in calibration_plans(grouped, 16) if n != "full"]
    times = {"full": 1.0, **{n: 0.1 * (i + 1) for i, n in enumerate(names)}}
    picked = vlm.fit_plans(_table(times), grouped, 3)
    assert list(picked) == [names[0], names[round((len(names) - 1) / 2)], names[-1]]  # fastest, middle, slowest
    assert picked[names[0]] == calibration_plans(grouped, 16)[names[0]]  # the widths the fit timed
    assert vlm.fit_plans(_table(times), grouped, 0) == {}
    assert vlm.fit_plans(SimpleNamespace(context=None), grouped, 3) == {}


def test_a_fit_plan_that_now_runs_slower_against_the_full_model_moved_negative():
    table = _table({"full": 0.25, "aligned50": 0.11})
    rows = [{"plan": "fit:aligned50", "measured_ms": 0.14, "round_spread_pct": 5.0}]
    (move,) = vlm.fit_plan_moves(table, rows, full_ms=0.25)
    assert move["plan"] == "aligned50"
    assert move["speedup_move_pct"] == pytest.approx(100 * (0.11 / 0.14 - 1))
    assert vlm._fit_moves({"fit_plans_retimed": [move]}) == "aligned50 -21%"
    assert vlm._fit_moves({}) == "-"  # JSONs of earlier runs render as before


def _round(full: float, random: float, fit: float) -> dict:
    ms = {"full@default": full, "aligned00@default": random, "unaligned01@default": 2 * random, "fit:aligned50@default": fit}
    return {"vcpu_slowdown": 0.0, "ms": ms}


def test_random_plans_slow_in_rounds_where_the_fit_plans_are_not_are_counted():
    fast = [_round(1.0, 1.0, 1.0) for _ in range(8)]
    together = [_round(1.0, 1.5, 1.5), _round(1.0, 1.4, 1.4)]
    apart = [_round(1.0, 1.5, 1.0)]
    move = tts.co_movement(fast + together + apart)
    assert move["random_slow_fit_not"] == 1 and move["fit_slow_random_not"] == 0
    assert 0.5 < move["correlation"] < 1.0
    assert tts.co_movement(fast + together)["correlation"] == pytest.approx(1.0)


def test_the_order_effect_reads_a_plan_timed_last_as_slower():
    """Shuffled rounds in which whichever plan runs last takes 1.3x its usual time: the effect by
    position reads 1.0 for the first positions and 1.3 for the last; fixed-order traces have none."""
    names = ["a", "b", "c"]
    base = {"a": 1.0, "b": 2.0, "c": 3.0}
    trace = []
    for k in range(9):
        order = names[k % 3:] + names[: k % 3]
        ms = {f"{n}@default": base[n] * (1.3 if pos == 2 else 1.0) for pos, n in enumerate(order)}
        trace.append({"ms": ms, "order": {"default": order}, "vcpu_slowdown": 0.0})
    effect = tts.order_effect(trace)
    assert effect[0] == pytest.approx(1.0) and effect[1] == pytest.approx(1.0) and effect[2] == pytest.approx(1.3)
    assert tts.order_effect([{k: v for k, v in r.items() if k != "order"} for r in trace]) is None


def test_rank_swaps_name_the_plans_the_table_ranks_the_other_way_with_their_gap():
    """Five plans, the table right but for c and d: one swap (Spearman 0.90), measured 2% apart,
    beside the wider of the two plans' ranges over rounds. The full model and the re-timed fit
    plans are not random plans and are never counted."""
    def row(plan, measured, lut, spread):
        return {"plan": plan, "measured_ms": measured, "lut_ms": lut, "round_spread_pct": spread}

    rows = [row("full", 1.0, 0.5, 1.0), row("a", 0.2, 0.21, 3.0), row("b", 0.3, 0.31, 2.0), row("c", 0.50, 0.42, 4.0),
            row("d", 0.51, 0.40, 6.0), row("e", 0.7, 0.69, 1.0), row("fit:x", 0.9, 0.1, 1.0)]
    (swap,) = vlm.rank_swaps(rows)
    assert swap["plans"] == ["c", "d"]
    assert swap["measured_gap_pct"] == pytest.approx(2.0) and swap["range_pct"] == 6.0
    assert vlm.spearman([r["lut_ms"] for r in rows[1:6]], [r["measured_ms"] for r in rows[1:6]]) == pytest.approx(0.9)
    assert vlm._swaps({"rows": rows}) == "2.0% apart (ranges 6%)"
    assert vlm._swaps({"rows": rows[:3]}) == "none"
