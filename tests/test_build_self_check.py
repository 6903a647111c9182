"""The build's self-check against the deployed timings (build/self_check.py): what it checks,
what it skips, and the feedback it leaves in the cached table for the next build."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hadmc_deploy.build import self_check as sc
from hadmc_deploy.latency.lut import LatencyTable, LutMeta, prices_sha256, read_table
from hadmc_deploy.latency.predictor import LutLatencyModel
from hadmc_deploy.report_md import self_check_lines
from hadmc_deploy.specs import LayerSpec

BASE = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), in_hw=(16, 16), out_hw=(16, 16), activation="relu", precision="int8")


def _setup(monkeypatch: pytest.MonkeyPatch, tmp_path, float_nodes: dict | None = None, batch: int = 1):
    table = LatencyTable(meta=LutMeta("cpu", "onnxruntime", "x", {}, 2, batch, "int8", 16))
    for cin in (16, 32, 48, 64):
        for cout in (16, 32, 48, 64):
            table.add(BASE.with_channels(cin, cout), 0.001 * cin * cout, 0.0, 1)
    cache = tmp_path / "lut-int8-b1-key.json"
    table.save(cache)
    model = LutLatencyModel(read_table(cache))
    full_widths = {"g": 64}
    graph = SimpleNamespace(layer_specs=lambda widths=None: [BASE.with_channels(64, (widths or full_widths)["g"])])
    monkeypatch.setattr(sc, "latency_model", lambda ctx: model)
    monkeypatch.setattr(sc, "graph", lambda ctx: graph)
    ctx = SimpleNamespace(plan=SimpleNamespace(precision="int8"), results={
        "search": {"keep": {"g": 32}}, "quantize": {"float_nodes": float_nodes or {}}, "latency model": {"cache_file": str(cache)}})
    p_full = model.predict([BASE.with_channels(64, 64)]).total_ms
    p_plan = model.predict([BASE.with_channels(64, 32)]).total_ms
    return ctx, cache, p_full, p_plan


def test_a_miss_leaves_scale_feedback_in_the_cached_table(monkeypatch, tmp_path):
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path)
    record = sc.check_deployed(ctx, {"baseline-int8": 0.7 * p_full, "pruned-int8": 0.7 * p_plan, "baseline-fp32": 9.0}, batch=1)
    assert record["checked"] and record["flagged"] and record["feedback_written_to"] == str(cache)
    fb = read_table(cache).feedback
    assert fb is not None and fb.scale == pytest.approx(0.7, rel=1e-6) and fb.offset_ms == 0.0
    assert LutLatencyModel(read_table(cache)).predict([BASE.with_channels(64, 64)]).total_ms == pytest.approx(0.7 * p_full, rel=1e-6)
    assert "cached table now carries feedback x0.700" in " ".join(self_check_lines(record))


def test_a_hit_moves_no_price_and_is_recorded(monkeypatch, tmp_path):
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path)
    prices = prices_sha256(cache)
    record = sc.check_deployed(ctx, {"baseline-int8": 1.05 * p_full, "pruned-int8": 0.96 * p_plan}, batch=1)
    assert record["checked"] and not record["flagged"] and record["feedback_written_to"] is None
    fb = read_table(cache).feedback
    assert fb.scale == 1.0 and fb.offset_ms == 0.0 and [p["measured_ms"] for p in fb.fitted_on] == [1.05 * p_full, 0.96 * p_plan]
    assert prices_sha256(cache) == prices  # a rebuild keyed on the table's prices is not invalidated
    model = LutLatencyModel(read_table(cache))
    assert model.predict([BASE.with_channels(64, 64)]).total_ms == pytest.approx(p_full, rel=1e-9)
    assert "within ±10% (recorded in the cached table: a later miss" in self_check_lines(record)[0]


def test_one_slow_build_does_not_set_the_scale_alone(monkeypatch, tmp_path):
    """Three builds timed on the table's scale, then one timed 1.35x slower (a slow spell of a shared
    machine): it is flagged, and the feedback it leaves is the median over all eight timings."""
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path)
    for k in (1.02, 0.97, 1.04):
        assert not sc.check_deployed(ctx, {"baseline-int8": k * p_full, "pruned-int8": k * p_plan}, batch=1)["flagged"]
        monkeypatch.setattr(sc, "latency_model", lambda ctx: LutLatencyModel(read_table(cache)))
    record = sc.check_deployed(ctx, {"baseline-int8": 1.35 * p_full, "pruned-int8": 1.35 * p_plan}, batch=1)
    assert record["flagged"] and record["history"] == 6 and record["feedback_written_to"] == str(cache)
    fb = read_table(cache).feedback
    assert len(fb.fitted_on) == sc.FEEDBACK_HISTORY and fb.scale == pytest.approx(1.03, rel=1e-6)  # median of 0.97 1.02 1.04 1.35 (x2 each)
    assert "over these timings and the 6 of earlier builds" in self_check_lines(record)[0]
    # a fifth build slow again: the oldest timings drop out, eight are kept
    monkeypatch.setattr(sc, "latency_model", lambda ctx: LutLatencyModel(read_table(cache)))
    sc.check_deployed(ctx, {"baseline-int8": 1.4 * p_full, "pruned-int8": 1.4 * p_plan}, batch=1)
    fb = read_table(cache).feedback
    assert len(fb.fitted_on) == sc.FEEDBACK_HISTORY and fb.scale == pytest.approx((1.04 + 1.35) / 2, rel=1e-6)


def test_a_graph_with_layers_the_guard_kept_in_float_is_not_held_against_the_table(monkeypatch, tmp_path):
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path, float_nodes={"pruned": [{"node": "n1"}, {"node": "n2"}]})
    record = sc.check_deployed(ctx, {"baseline-int8": p_full, "pruned-int8": 3.0 * p_plan}, batch=1)
    assert [p["name"] for p in record["plans"]] == ["baseline"] and not record["flagged"]
    assert "kept 2 layer(s) in float" in record["skipped"][0]


def test_another_batch_is_not_checked(monkeypatch, tmp_path):
    ctx, _, p_full, _ = _setup(monkeypatch, tmp_path, batch=32)
    record = sc.check_deployed(ctx, {"baseline-int8": p_full}, batch=1)
    assert not record["checked"] and "batch 32" in record["why"]
    assert "not run" in self_check_lines(record)[0]


def _latency_check(base_ms: float, plan_ms: float, precision: str = "int8", batch: int = 1, plan: dict | None = None) -> dict:
    return {"checked": True, "precision": precision, "batch": batch, "measured_ms": {"baseline": base_ms, "plan": plan_ms}, "plan_widths": plan or {"g": 32}}


def test_a_slow_spell_in_the_decide_stage_alone_is_not_fed_back(monkeypatch, tmp_path):
    """The latency check timed both graphs on the table's scale; the decide stage, minutes later,
    25% slower (the machine's level moved, both graphs alike): the faster timing of each graph is
    checked, so no miss is flagged and the cached table keeps its scale."""
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path)
    ctx.results["latency check"] = _latency_check(1.01 * p_full, 0.99 * p_plan)
    record = sc.check_deployed(ctx, {"baseline-int8": 1.25 * p_full, "pruned-int8": 1.28 * p_plan}, batch=1)
    assert record["checked"] and not record["flagged"] and record["feedback_written_to"] is None
    assert [p["measured_ms"] for p in record["plans"]] == [1.01 * p_full, 0.99 * p_plan]
    assert record["timings"]["baseline"] == {"decide": 1.25 * p_full, "latency check": 1.01 * p_full}
    assert read_table(cache).feedback.scale == 1.0
    line = self_check_lines(record)[0]
    assert "the faster of the build's two side-by-side timings" in line and "24% apart" in line


def test_both_stages_slow_is_a_miss(monkeypatch, tmp_path):
    ctx, cache, p_full, p_plan = _setup(monkeypatch, tmp_path)
    ctx.results["latency check"] = _latency_check(1.3 * p_full, 1.3 * p_plan)
    record = sc.check_deployed(ctx, {"baseline-int8": 1.4 * p_full, "pruned-int8": 1.4 * p_plan}, batch=1)
    assert record["flagged"] and read_table(cache).feedback.scale == pytest.approx(1.3, rel=1e-6)


def test_a_latency_check_of_another_batch_or_precision_is_not_used(monkeypatch, tmp_path):
    ctx, _, p_full, p_plan = _setup(monkeypatch, tmp_path)
    for check in (_latency_check(p_full, p_plan, batch=8), _latency_check(p_full, p_plan, precision="fp32"), {"checked": False}):
        ctx.results["latency check"] = check
        record = sc.check_deployed(ctx, {"baseline-int8": 1.3 * p_full, "pruned-int8": 1.3 * p_plan}, batch=1)
        assert record["flagged"] and record["timings"]["baseline"] == {"decide": 1.3 * p_full}


def test_a_latency_check_of_another_plan_times_only_the_baseline(monkeypatch, tmp_path):
    ctx, _, p_full, p_plan = _setup(monkeypatch, tmp_path)
    ctx.results["latency check"] = _latency_check(p_full, p_plan, plan={"g": 48})
    record = sc.check_deployed(ctx, {"baseline-int8": 1.3 * p_full, "pruned-int8": 1.3 * p_plan}, batch=1)
    assert record["timings"] == {"baseline": {"decide": 1.3 * p_full, "latency check": p_full}, "pruned": {"decide": 1.3 * p_plan}}
    assert record["flagged"]  # the pruned model's only timing missed by 30%
