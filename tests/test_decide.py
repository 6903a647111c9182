"""The closed loop's pure parts: which variant deploys, the budget verdict, the latency
correction fitted on measurements, and the chance-level warning."""

from __future__ import annotations

import pytest

from hadmc_deploy.build.correction import LatencyCorrection, MeasuredPoint
from hadmc_deploy.build.decide import (
    Candidate,
    budget_reference,
    budget_verdict,
    chance_level_warning,
    choose,
    delivers,
    guard_exclusion,
    verdict,
    vouch_for_choice,
)
from hadmc_deploy.latency.base import Prediction


def test_fastest_allowed_candidate_wins() -> None:
    cands = [Candidate("baseline-fp32", 10.0, 90.0), Candidate("baseline-int8", 5.0, 89.5), Candidate("pruned-int8", 3.0, 80.0, excluded="loses 10 points")]
    name, reason = choose(cands, noise=0.05)
    assert name == "baseline-int8" and "fastest" in reason


def test_a_slower_int8_never_displaces_fp32() -> None:
    """INT8 measured slower than FP32 (narrow layers on a CPU): the FP32 original stays."""
    name, _ = choose([Candidate("baseline-fp32", 1.0, 90.0), Candidate("baseline-int8", 1.6, 90.0), Candidate("pruned-int8", 1.2, 90.0)], noise=0.05)
    assert name == "baseline-fp32"


def test_within_noise_the_simpler_variant_stays() -> None:
    name, reason = choose([Candidate("baseline-fp32", 1.00, 90.0), Candidate("pruned-int8", 0.97, 90.0)], noise=0.05)
    assert name == "baseline-fp32" and "noise" in reason
    name, _ = choose([Candidate("baseline-fp32", 1.00, 90.0), Candidate("pruned-int8", 0.80, 90.0)], noise=0.05)
    assert name == "pruned-int8"


def test_guard_and_budget_verdicts() -> None:
    assert guard_exclusion(88.0, 90.0, 1.0).startswith("loses 2.00 points")
    assert guard_exclusion(89.5, 90.0, 1.0) == ""
    assert guard_exclusion(50.0, 90.0, None) == ""
    assert budget_verdict(2.0, 1.95, 0.05)["met"] is True
    assert budget_verdict(2.0, 1.6, 0.05)["met"] is False
    assert budget_verdict(None, 1.6, 0.05) is None


def test_noise_never_lets_the_original_meet_a_budget() -> None:
    """A 1.08x budget with ±10% noise: 0.98x-1.00x (the original itself) is not met, 1.02x is."""
    assert budget_verdict(1.08, 1.00, 0.10)["met"] is False
    assert budget_verdict(1.08, 0.98, 0.10)["met"] is False
    assert budget_verdict(1.08, 1.02, 0.10)["met"] is True
    p50 = {"baseline-int8": 1.0, "pruned-int8": 0.98}
    assert not delivers("baseline-int8", p50, "baseline-int8", 1.08, 0.10, False, "int8")
    assert delivers("pruned-int8", p50, "baseline-int8", 1.08, 0.10, False, "int8")
    assert budget_verdict(0.9, 1.0, 0.0)["met"] is True  # a budget looser than the original


def test_correction_fits_the_unpriced_overhead() -> None:
    """Predicted 4 -> 2 ms (2x), measured 5 -> 3 ms (1.67x): the fit finds scale 1, offset 1 ms,
    so a plan predicted at 1.5 ms is expected at 2.5 ms."""
    corr = LatencyCorrection.fit([MeasuredPoint("baseline", 4.0, 5.0), MeasuredPoint("plan", 2.0, 3.0)])
    assert corr.scale == pytest.approx(1.0) and corr.offset_ms == pytest.approx(1.0)
    pred = corr.apply(Prediction(total_ms=1.5, per_layer_ms=[1.0, 0.5], source="lut"))
    assert pred.total_ms == pytest.approx(2.5) and pred.per_layer_ms == [1.0, 0.5]


def test_correction_refuses_ill_conditioned_fits() -> None:
    """Two plans predicted almost alike: only a scale is fitted, never a wild offset."""
    corr = LatencyCorrection.fit([MeasuredPoint("a", 8.22, 20.0), MeasuredPoint("b", 8.20, 7.0)])
    assert corr.offset_ms == 0.0 and corr.scale > 0
    negative = LatencyCorrection.fit([MeasuredPoint("a", 4.0, 3.0), MeasuredPoint("b", 2.0, 5.0)])
    assert negative.offset_ms == 0.0 and negative.scale > 0


def test_chance_level_warning_names_normalisation() -> None:
    assert "--mean/--std" in chance_level_warning(10.5, 10)
    assert chance_level_warning(88.0, 10) is None


def test_verdict_follows_what_was_asked() -> None:
    cands = [Candidate("baseline-fp32", 10.0, 90.0), Candidate("baseline-int8", 4.0, 90.0),
             Candidate("pruned-int8", 2.0, 87.0, excluded="loses 3.00 points"), Candidate("pruned-mixed", 2.5, 89.5)]
    # a pruned variant within the guard meets 1.5x over the INT8 original: exit 0 even though pruned-int8 was excluded
    assert verdict("pruned-mixed", cands, "baseline-int8", 1.5, 0.05, False, "int8")[0] == 0
    # only the excluded variant would meet 1.9x: the guard is why (15)
    code, why = verdict("pruned-mixed", cands, "baseline-int8", 1.9, 0.05, False, "int8")
    assert code == 15 and why.startswith("pruned-int8 would deliver it")
    # nothing reaches 3x: the budget (14)
    assert verdict("pruned-mixed", cands, "baseline-int8", 3.0, 0.05, False, "int8")[0] == 14
    # no budget: FP32 deployed because INT8 measured slower is not a failure
    slow_int8 = [Candidate("baseline-fp32", 1.0, 90.0), Candidate("baseline-int8", 1.5, 90.0)]
    assert verdict("baseline-fp32", slow_int8, "baseline-int8", None, 0.05, False, "int8")[0] == 0
    # no budget, every INT8 graph outside the guard: 15
    broken = [Candidate("baseline-fp32", 1.0, 90.0), Candidate("baseline-int8", 0.5, 20.0, excluded="loses 70.00 points")]
    assert verdict("baseline-fp32", broken, "baseline-int8", None, 0.05, False, "int8")[0] == 15


def test_a_budget_is_measured_against_the_faster_original() -> None:
    """INT8 of the original measured slower than FP32 (MobileNetV3 on digits): the unpruned FP32
    original must not "meet" a 1.3x pruning budget by being faster than that slow INT8 graph."""
    p50 = {"baseline-fp32": 1.0, "baseline-int8": 1.6, "pruned-int8": 1.2, "pruned-fp32": 0.9}
    ref = budget_reference(p50, "baseline-int8", "baseline-fp32")
    assert ref == "baseline-fp32"
    cands = [Candidate(n, t, 90.0) for n, t in p50.items()]
    assert verdict("baseline-fp32", cands, ref, 1.3, 0.05, False, "int8")[0] == 14
    assert verdict("baseline-fp32", cands, "baseline-int8", 1.3, 0.05, False, "int8")[0] == 0  # the old reference let it pass
    # INT8 that pays stays the reference (the demo: a budget over the INT8 original)
    assert budget_reference({"baseline-fp32": 2.0, "baseline-int8": 1.2}, "baseline-int8", "baseline-fp32") == "baseline-int8"


def test_demo_retries_the_plan_it_measured(tmp_path) -> None:  # noqa: ANN001
    """After a missed budget whose fastest variant was pruned, the demo's retry reuses that
    build's width plan (a copy beside the build); after one that deployed the original, none."""
    import json

    from hadmc_deploy.commands.demo import _measured_pruned_plan

    out = tmp_path / "build-cpu"
    out.mkdir()
    (out / "width_plan.json").write_text('{"keep": {"conv1": 16}}')
    (out / "report.json").write_text(json.dumps({"decision": {"deploy": "pruned-int8"}}))
    kept = _measured_pruned_plan(out)
    assert kept is not None and kept.parent == tmp_path and json.loads(kept.read_text()) == {"keep": {"conv1": 16}}
    (out / "report.json").write_text(json.dumps({"decision": {"deploy": "baseline-int8"}}))
    assert _measured_pruned_plan(out) is None
    # the original deployed as simpler within noise, the pruned plan measured fastest: that plan is retried
    (out / "report.json").write_text(json.dumps({"decision": {"deploy": "baseline-int8", "budget": {"best": {"variant": "pruned-int8", "speedup": 1.06}}}}))
    assert _measured_pruned_plan(out) is not None
    (out / "report.json").unlink()
    assert _measured_pruned_plan(out) is None


def test_predictions_at_the_primary_batch_meet_the_side_by_side_measurement() -> None:
    """At the decide stage's batch a LUT prediction is checked against the fastest side-by-side
    round (the definition the model predicts), elsewhere against the evaluate stage's p50;
    analytic estimates are never flagged."""
    from types import SimpleNamespace

    from hadmc_deploy.report import prediction_misses

    ctx = SimpleNamespace(results={"decide": {"primary_batch": 32, "candidates": [{"name": "baseline-int8", "p50_ms": 1.0}]}})
    row = {"name": "baseline-int8", "predicted": {"32": {"ms": 1.05, "source": "lut"}, "1": {"ms": 0.10, "source": "lut"}},
           "latency": {"32": {"p50_ms": 1.5}, "1": {"p50_ms": 0.2}}}
    analytic = {"name": "baseline-fp32", "predicted": {"32": {"ms": 9.0, "source": "analytic"}}, "latency": {"32": {"p50_ms": 2.0}}}
    misses = prediction_misses(ctx, [row, analytic])
    assert [m["what"] for m in misses] == ["baseline-int8 latency at batch 1 (ms, p50)"]


def test_a_graph_timed_in_two_stages_is_judged_on_the_faster_timing() -> None:
    """Where the self-check took the latency check's timing of a graph (faster than the decide
    stage's, build/self_check.py), the report's misses judge the prediction on the same number."""
    from types import SimpleNamespace

    from hadmc_deploy.report import prediction_misses

    check = {"checked": True, "plans": [{"name": "baseline", "predicted_ms": 0.71, "measured_ms": 0.70}],
             "timings": {"baseline": {"decide": 0.88, "latency check": 0.70}}}
    ctx = SimpleNamespace(plan=SimpleNamespace(precision="int8"), results={"decide": {
        "primary_batch": 32, "candidates": [{"name": "baseline-int8", "p50_ms": 0.88}], "self_check": check}})
    row = {"name": "baseline-int8", "predicted": {"32": {"ms": 0.71, "source": "lut"}}, "latency": {"32": {"p50_ms": 0.9}}}
    assert prediction_misses(ctx, [row]) == []
    check["timings"]["baseline"] = {"decide": 0.88}  # timed once: the decide stage's round
    check["plans"][0]["measured_ms"] = 0.88
    assert [m["measured"] for m in prediction_misses(ctx, [row])] == [0.88]


def test_a_missed_budget_names_the_fastest_measured_variant() -> None:
    """The deployed original (simpler, within noise) is not called the best measured."""
    from hadmc_deploy.build.pipeline import raise_on_unmet
    from hadmc_deploy.errors import BudgetError

    report = {"decision": {"deploy": "baseline-int8", "artifact": "artifacts/cpu/deploy", "verdict": {"exit_code": 14, "why": ""},
                           "budget": {"goal_speedup": 1.25, "measured_speedup": 1.0, "best": {"variant": "pruned-int8", "speedup": 1.06}}}}
    with pytest.raises(BudgetError, match="best measured is pruned-int8 at 1.06x.*deployed baseline-int8") as err:
        raise_on_unmet(report)
    assert err.value.best_speedup == 1.06
    # a variant kept from deploying that measured faster is named with why (a PixelShuffle CNN's exit 14 named only the original)
    report["decision"]["budget"]["excluded_faster"] = [{"variant": "pruned-fp32", "speedup": 1.12, "why": "loses 8.40 points of accuracy (guard 1.00)"}]
    with pytest.raises(BudgetError, match=r"pruned-fp32 measured faster \(1.12x\) but loses 8.40 points of accuracy"):
        raise_on_unmet(report)


def test_a_budget_met_only_within_noise_says_so():
    from hadmc_deploy.report_md import budget_phrase

    within = budget_phrase({"goal_speedup": 1.25, "measured_speedup": 1.13, "noise": 0.1, "met": True, "reference": "baseline-int8"})
    assert "met within the measured noise" in within and "1.13x over baseline-int8" in within and "±10%" in within
    clean = budget_phrase({"goal_speedup": 1.25, "measured_speedup": 1.31, "noise": 0.1, "met": True, "reference": "baseline-int8"})
    assert "**met** when measured (1.31x" in clean
    missed = budget_phrase({"goal_speedup": 1.25, "measured_speedup": 1.01, "noise": 0.1, "met": False, "reference": "baseline-int8"})
    assert "NOT met" in missed and "1.01x" in missed
    # asked with --latency-ms: the milliseconds, the speedup they meant, and what the deployed variant measured
    in_ms = budget_phrase({"goal_speedup": 1.72, "measured_speedup": 1.0, "noise": 0.1, "met": False, "reference": "baseline-int8",
                           "goal_ms": 0.3, "deployed_ms": 0.516})
    assert "Budget 0.3 ms (1.72x over baseline-int8 as measured): **NOT met** when measured (0.516 ms, 1.00x" in in_ms


def test_a_mixed_variant_is_labelled_as_priced_all_int8_and_not_flagged(monkeypatch) -> None:
    """The table prices no float islands: a mixed variant shows its INT8 plan's price, labelled so,
    and its gap to the measurement is not reported as the latency model's miss."""
    from types import SimpleNamespace

    from hadmc_deploy.build.stages import evaluate
    from hadmc_deploy.report import prediction_misses
    from hadmc_deploy.specs import LayerSpec

    spec = LayerSpec("conv", 8, 8)
    monkeypatch.setattr(evaluate, "graph", lambda ctx: SimpleNamespace(layer_specs=lambda widths=None: [spec]))
    monkeypatch.setattr(evaluate, "latency_model", lambda ctx: SimpleNamespace(predict=lambda specs: SimpleNamespace(total_ms=2.0, source="lut")))
    ctx = SimpleNamespace(results={"search": {}}, plan=SimpleNamespace(batch_sizes=(1, 8), input_shape=(1, 3, 8, 8)))
    mixed = evaluate.predicted(ctx, "baseline", "mixed")
    assert mixed == {"1": {"ms": 2.0, "source": "lut (as all-INT8)"}, "8": {"ms": 2.0, "source": "lut (as all-INT8)"}}
    int8 = evaluate.predicted(ctx, "baseline", "int8")
    assert int8["1"] == {"ms": 2.0, "source": "lut"}
    rows = [{"name": "baseline-mixed", "predicted": mixed, "latency": {"1": {"p50_ms": 1.0}}},
            {"name": "baseline-int8", "predicted": int8, "latency": {"1": {"p50_ms": 1.0}}}]
    assert [m["what"] for m in prediction_misses(SimpleNamespace(results={}), rows)] == ["baseline-int8 latency at batch 1 (ms, p50)"]


def test_a_budget_missed_because_of_the_guards_float_layers_says_so() -> None:
    from hadmc_deploy.build.pipeline import raise_on_unmet
    from hadmc_deploy.errors import BudgetError

    budget = {"goal_speedup": 2.0, "measured_speedup": 1.77, "best": {"variant": "pruned-int8", "speedup": 1.77},
              "guard_float_layers": 3, "plan_all_int8_speedup": 2.02}
    report = {"decision": {"deploy": "pruned-int8", "artifact": "artifacts/cpu/deploy", "verdict": {"exit_code": 14, "why": ""}, "budget": budget}}
    with pytest.raises(BudgetError) as err:
        raise_on_unmet(report)
    assert "2.02x all-INT8" in err.value.hint and "kept 3 of its layers in float" in err.value.hint and "--allow-accuracy-drop" in err.value.hint
    budget["guard_float_layers"] = 0  # nothing kept in float: the usual advice
    with pytest.raises(BudgetError) as err:
        raise_on_unmet(report)
    assert "ask for less" in err.value.hint


def test_a_budget_judged_against_the_faster_fp32_original_advises_an_fp32_build() -> None:
    """An INT8 build of a CNN with GroupNorm and PReLU: its INT8 original ran slower than its FP32
    one, so the budget was judged against FP32, which the plan chosen for INT8 prices did not reach.
    The advice names --precision fp32; an FP32 build's miss keeps the usual advice."""
    from hadmc_deploy.build.pipeline import raise_on_unmet
    from hadmc_deploy.errors import BudgetError

    budget = {"goal_speedup": 1.5, "measured_speedup": 1.0, "best": {"variant": "baseline-fp32", "speedup": 1.0}, "guard_float_layers": 0,
              "plan_all_int8_speedup": 1.61, "reference": "baseline-fp32", "original_at_precision": "baseline-int8"}
    report = {"decision": {"deploy": "baseline-fp32", "artifact": "artifacts/cpu/deploy", "verdict": {"exit_code": 14, "why": ""}, "budget": budget}}
    with pytest.raises(BudgetError) as err:
        raise_on_unmet(report)
    assert "baseline-int8 measured slower than baseline-fp32" in err.value.hint and "--precision fp32" in err.value.hint
    assert "1.00x over baseline-fp32, the original that measured faster than baseline-int8" in str(err.value)
    budget["original_at_precision"] = "baseline-fp32"
    with pytest.raises(BudgetError) as err:
        raise_on_unmet(report)
    assert "--precision fp32" not in err.value.hint and "ask for less" in err.value.hint


def test_the_unmet_errors_and_the_last_line_name_the_artifact_under_the_build_directory(tmp_path) -> None:
    """A user in another directory can pass the path they are given to `bench`: the exit-14/15
    errors and the printed decision line join the build directory to the artifact's path, which
    report.md keeps relative to itself."""
    from pathlib import Path

    from hadmc_deploy.build.pipeline import raise_on_unmet
    from hadmc_deploy.errors import AccuracyGuardError
    from hadmc_deploy.report_md import decision_line

    build_dir = Path("build") / "net-cpu"
    report = {"decision": {"deploy": "baseline-int8", "artifact": "artifacts/cpu/deploy", "verdict": {"exit_code": 15, "why": "pruned-int8 loses 2 points"}}}
    with pytest.raises(AccuracyGuardError, match=r"deployed baseline-int8 instead \(build/net-cpu/artifacts/cpu/deploy\)"):
        raise_on_unmet(report, build_dir)
    deploy = {"variant": "pruned-int8", "artifact": "artifacts/cpu/deploy", "speedup_vs_fp32_original": 2.0, "speedup_vs_original_at_precision": 1.3,
              "primary_batch": 32}
    printed = decision_line({"deploy": deploy, "target": {"precision": "int8"}}, build_dir)
    assert "(`build/net-cpu/artifacts/cpu/deploy`)" in printed
    assert "(`artifacts/cpu/deploy`)" in decision_line({"deploy": deploy, "target": {"precision": "int8"}})  # report.md's own line


def test_variants_the_table_does_not_price_are_priced_analytically_without_a_warning(monkeypatch) -> None:
    """An INT8 table at batch 32 prices the INT8 variants at batch 32; the FP32 variants and other
    batches go to its analytic fallback, labelled "analytic", with no "does not cover" warning."""
    from types import SimpleNamespace

    from hadmc_deploy.build.stages import evaluate
    from hadmc_deploy.latency.analytic import AnalyticLatencyModel
    from hadmc_deploy.latency.lut import LatencyTable, LutMeta
    from hadmc_deploy.latency.predictor import LutLatencyModel
    from hadmc_deploy.specs import LayerSpec
    from hadmc_deploy.targets import get_target

    spec = LayerSpec("conv", 16, 16, (3, 3), (1, 1), (1, 1), in_hw=(8, 8), out_hw=(8, 8), batch=32, precision="int8")
    table = LatencyTable(meta=LutMeta("cpu", "onnxruntime", "x", {}, 2, 32, "int8", 16))
    table.add(spec, 0.05, 0.0, 1)
    warnings: list[str] = []
    lm = LutLatencyModel(table, AnalyticLatencyModel(get_target("cpu")), ui=SimpleNamespace(warn=warnings.append, log=lambda *a: None))
    monkeypatch.setattr(evaluate, "graph", lambda ctx: SimpleNamespace(layer_specs=lambda widths=None: [spec]))
    monkeypatch.setattr(evaluate, "latency_model", lambda ctx: lm)
    ctx = SimpleNamespace(results={"search": {}}, plan=SimpleNamespace(batch_sizes=(1, 32)))
    assert evaluate.predicted(ctx, "baseline", "int8")["32"] == {"ms": pytest.approx(0.05), "source": "lut"}
    assert evaluate.predicted(ctx, "baseline", "int8")["1"]["source"] == "analytic"
    assert {p["source"] for p in evaluate.predicted(ctx, "baseline", "fp32").values()} == {"analytic"}
    assert warnings == []


def _checks_run(failing: set[str]):  # noqa: ANN202
    """A check that fails for `failing` and records the order it was asked in."""
    asked: list[str] = []

    def check(name: str) -> tuple[str, dict]:
        asked.append(name)
        return ("its outputs disagree with FP32 (test)" if name in failing else ""), {"passed": name not in failing}

    return asked, check


def test_a_mixed_graph_slower_than_the_choice_is_never_checked() -> None:
    """The held-out check of a mixed graph (seconds for a ResNet-18) runs only where it can change
    what deploys: baseline-mixed, slower than baseline-int8, is left unchecked and not chosen."""
    cands = [Candidate("baseline-fp32", 10.0, None), Candidate("baseline-int8", 3.7, None), Candidate("baseline-mixed", 3.9, None)]
    asked, check = _checks_run(set())
    _, name, _, checks = vouch_for_choice(cands, lambda c: choose(c, 0.02), {"baseline-mixed"}, check)
    assert name == "baseline-int8" and asked == [] and checks == {}


def test_a_chosen_mixed_graph_that_fails_its_check_gives_way() -> None:
    """pruned-mixed is fastest, fails its check, and is excluded; pruned-int8 is chosen, and the next
    pending mixed graph is checked only once it is the fastest allowed."""
    cands = [Candidate("baseline-fp32", 10.0, None), Candidate("baseline-int8", 3.7, None), Candidate("baseline-mixed", 3.9, None),
             Candidate("pruned-int8", 1.9, None), Candidate("pruned-mixed", 1.7, None)]
    asked, check = _checks_run({"pruned-mixed"})
    out, name, _, checks = vouch_for_choice(cands, lambda c: choose(c, 0.02), {"baseline-mixed", "pruned-mixed"}, check)
    assert name == "pruned-int8" and asked == ["pruned-mixed"] and checks == {"pruned-mixed": {"passed": False}}
    assert {c.name: c.excluded for c in out}["pruned-mixed"].startswith("its outputs disagree")
    assert verdict(name, out, "baseline-int8", 1.9, 0.02, True, "int8")[0] == 0  # pruned-int8 still delivers 1.95x


def test_the_fastest_allowed_mixed_graph_is_checked_even_when_a_simpler_one_is_chosen() -> None:
    """Within noise the simpler pruned-int8 deploys, but the budget's verdict names the fastest
    allowed variant: pruned-mixed must have passed its check to be named, and a failure there
    excludes it."""
    cands = [Candidate("baseline-fp32", 10.0, None), Candidate("pruned-int8", 1.75, None), Candidate("pruned-mixed", 1.70, None)]
    asked, check = _checks_run(set())
    out, name, _, _ = vouch_for_choice(cands, lambda c: choose(c, 0.05), {"pruned-mixed"}, check)
    assert name == "pruned-int8" and asked == ["pruned-mixed"] and not any(c.excluded for c in out)
    asked, check = _checks_run({"pruned-mixed"})
    out, name, _, _ = vouch_for_choice(cands, lambda c: choose(c, 0.05), {"pruned-mixed"}, check)
    assert name == "pruned-int8" and {c.name: c.excluded for c in out}["pruned-mixed"] != ""


def test_the_input_shapes_batch_is_benchmarked_and_decided_at() -> None:
    """--input-shape 4,... without --batch: batch 4 joins the target's benchmarked batches and is the
    primary batch (a build searched and priced batch 4, then decided at batch 1 and skipped its
    self-check); an explicit --batch list is left as given."""
    from pathlib import Path
    from types import SimpleNamespace

    from hadmc_deploy.build.inputs import primary_batch
    from hadmc_deploy.plan import BuildPlan
    from hadmc_deploy.targets import get_target

    def plan(shape: tuple[int, ...], options: dict) -> BuildPlan:
        return BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=shape, trust_model=False, target=get_target("cpu"), out_dir=Path("."), options=options)

    four = plan((4, 1, 16, 16), {})
    assert four.batch_sizes == (1, 4, 8, 32) and primary_batch(SimpleNamespace(plan=four)) == 4
    assert plan((1, 1, 16, 16), {}).batch_sizes == (1, 8, 32)
    given = plan((4, 1, 16, 16), {"batch": [1, 8]})
    assert given.batch_sizes == (1, 8) and primary_batch(SimpleNamespace(plan=given)) == 1


def test_a_budget_missed_because_int8_ran_slower_builds_again_at_fp32() -> None:
    """No --precision: the CPU target's INT8 build of a CNN whose INT8 original ran slower than its
    FP32 one (0.144 vs 0.138 ms) missed 1.4x against FP32; the build is planned again at FP32, the
    reason naming both timings. Not when --precision was given, when the build was FP32 already,
    when the budget was met, or when INT8 was the faster original."""
    from pathlib import Path

    from hadmc_deploy.build.rebuild import fp32_rebuild
    from hadmc_deploy.plan import BuildPlan
    from hadmc_deploy.targets import get_target

    def plan(options: dict) -> BuildPlan:
        return BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=(1, 3, 48, 48), trust_model=False, target=get_target("cpu"),
                         out_dir=Path("."), options=options)

    def report(code: int, reference: str = "baseline-fp32") -> dict:
        budget = {"goal_speedup": 1.4, "measured_speedup": 1.21, "reference": reference, "original_at_precision": "baseline-int8"}
        cands = [{"name": "baseline-fp32", "p50_ms": 0.138}, {"name": "baseline-int8", "p50_ms": 0.144}]
        return {"decision": {"budget": budget, "candidates": cands, "primary_batch": 1, "verdict": {"exit_code": code}}}

    auto = plan({"speedup": 1.4})
    again = fp32_rebuild(auto, report(14))
    assert again is not None and again[0].precision == "fp32" and again[0].options["speedup"] == 1.4
    assert "baseline-int8 measured slower than baseline-fp32 (0.144 vs 0.138 ms at batch 1)" in again[1]
    assert fp32_rebuild(plan({"speedup": 1.4, "precision": "int8"}), report(14)) is None  # asked for INT8
    assert fp32_rebuild(plan({"speedup": 1.4, "precision": "fp32"}), report(14)) is None
    assert fp32_rebuild(auto, report(0)) is None and fp32_rebuild(auto, report(15)) is None
    assert fp32_rebuild(auto, report(14, reference="baseline-int8")) is None  # INT8 was the faster original
    gpu = BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=(1, 3, 48, 48), trust_model=False, target=get_target("t4"),
                    out_dir=Path("."), options={"speedup": 1.4})
    assert fp32_rebuild(gpu, report(14)) is None  # measured on ONNX Runtime only


def test_the_first_build_is_kept_aside_before_the_fp32_rebuild(tmp_path) -> None:
    """Its report as report-int8.*, its artifacts under artifacts-int8/ with the report's paths
    following them, and nothing of it left in artifacts/cpu/ for the rebuild's variants to sit beside."""
    from hadmc_deploy.build.rebuild import keep_first_build
    from hadmc_deploy.plan import BuildPlan
    from hadmc_deploy.targets import get_target

    plan = BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=(1, 3, 8, 8), trust_model=False, target=get_target("cpu"),
                     out_dir=tmp_path, options={"speedup": 1.4})
    (tmp_path / "artifacts" / "cpu" / "pruned-int8").mkdir(parents=True)
    (tmp_path / "artifacts" / "cpu" / "pruned-int8" / "model.onnx").write_text("x")
    (tmp_path / "report.json").write_text('{"artifact": "artifacts/cpu/deploy"}')
    (tmp_path / "report.md").write_text("deploy `artifacts/cpu/deploy`")
    keep_first_build(plan)
    assert (tmp_path / "artifacts-int8" / "cpu" / "pruned-int8" / "model.onnx").is_file()
    assert not (tmp_path / "artifacts" / "cpu").exists()
    assert (tmp_path / "report-int8.json").read_text() == '{"artifact": "artifacts-int8/cpu/deploy"}'
    assert (tmp_path / "report-int8.md").read_text() == "deploy `artifacts-int8/cpu/deploy`"


def test_the_report_shows_the_decision_s_rounds_at_the_primary_batch() -> None:
    """The evaluate stage leaves the primary batch to the decide stage's side-by-side rounds: the
    report's row there is the fastest round's p50 (the decision's number) with the median round's
    tail, and the speedups are taken again from it; other batches keep the evaluate stage's."""
    from hadmc_deploy.backends import LatencyStats
    from hadmc_deploy.build.side_by_side import ROUND_STATS, round_stats, with_decision_timings

    def stats(p50: float, p90: float) -> LatencyStats:
        return LatencyStats(p50_ms=p50, p90_ms=p90, p99_ms=p90 * 1.5, mean_ms=p50, min_ms=p50 * 0.9, runs=8)

    timed = {"baseline-fp32": round_stats([stats(2.0, 2.6), stats(1.8, 3.0), stats(2.2, 2.4)]), "pruned-fp32": round_stats([stats(1.0, 1.2)])}
    assert timed["baseline-fp32"]["p50_ms"] == 1.8 and timed["baseline-fp32"]["p90_ms"] == 2.6 and timed["baseline-fp32"]["runs"] == 24
    assert timed["baseline-fp32"]["timed"] == ROUND_STATS.format(rounds=3)
    variants = [{"name": "baseline-fp32", "latency": {"8": {"p50_ms": 16.0}}}, {"name": "pruned-fp32", "latency": {"8": {"p50_ms": 4.0}}},
                {"name": "pruned-int8", "latency": {}}]
    rows = with_decision_timings(variants, {"primary_batch": 1, "latency": timed})
    assert [list(r["latency"]) for r in rows] == [["1", "8"], ["1", "8"], []]
    assert rows[1]["speedup"] == {"1": 1.8, "8": 4.0} and rows[2]["speedup"] == {}
    assert "1" not in variants[0]["latency"]  # the evaluate stage's rows are not changed
    assert with_decision_timings(variants, {}) is variants


def _rebuilt_dir(tmp_path):
    """A build directory after an FP32 rebuild that missed its budget too: the first build's
    artifacts and report kept aside, the rebuild's in place."""
    from types import SimpleNamespace

    from hadmc_deploy.plan import BuildPlan
    from hadmc_deploy.targets import get_target
    from hadmc_deploy.ui import quiet_ui

    plan = BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=(1, 3, 8, 8), trust_model=False, target=get_target("cpu"),
                     out_dir=tmp_path, options={"speedup": 2.0})
    for where in ("artifacts-int8/cpu/deploy", "artifacts/cpu/deploy"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "model.onnx").write_text(where)
    (tmp_path / "report.json").write_text('{"deploy": "artifacts/cpu/deploy", "from": "the rebuild"}')
    (tmp_path / "report.md").write_text("rebuild: `artifacts/cpu/deploy`")
    (tmp_path / "report-int8.json").write_text('{"deploy": "artifacts-int8/cpu/deploy"}')
    (tmp_path / "report-int8.md").write_text("first: `artifacts-int8/cpu/deploy`")
    first = {"decision": {"deploy": "pruned-int8", "verdict": {"exit_code": 14}}, "notes": []}
    second = {"decision": {"deploy": "pruned-fp32", "primary_batch": 1, "verdict": {"exit_code": 14}}, "notes": ["rebuilt"]}
    return SimpleNamespace(plan=plan, ui=quiet_ui()), first, second


def test_a_rebuild_that_also_misses_keeps_the_first_build_where_that_measured_faster(tmp_path, monkeypatch) -> None:
    """Both builds missed; the first build's deployed artifact, timed side by side with the
    rebuild's, is faster beyond the noise: it deploys again, its report back in place, the
    rebuild's kept as report-fp32.* with its artifacts under artifacts-fp32/."""
    import hadmc_deploy.build.rebuild as rebuild

    ctx, first, second = _rebuilt_dir(tmp_path)
    written, saved = [], []
    monkeypatch.setattr(rebuild, "write_report", lambda ctx, report: written.append(report) or report)
    monkeypatch.setattr(type(ctx.plan), "save", lambda plan: saved.append(plan.precision))
    timed = []

    def timer(ctx, rows, batch):
        timed.append(([r["artifact"] for r in rows], batch))
        return {"first": 1.0, "rebuild": 1.3}, 0.05

    report = rebuild.keep_faster_build(ctx, first, second, "fp32", timer=timer)
    assert timed == [(["artifacts-int8/cpu/deploy", "artifacts/cpu/deploy"], 1)]
    assert report is written[0] and report["decision"]["deploy"] == "pruned-int8" and report["rebuild"]["deploy_ms"] == 1.3
    assert saved == ["int8"]  # plan.json: --resume continues the build that deploys
    assert "missed the budget too" in report["notes"][0] and "report-fp32.md" in report["notes"][0]
    assert (tmp_path / "artifacts/cpu/deploy/model.onnx").read_text() == "artifacts-int8/cpu/deploy"
    assert (tmp_path / "artifacts-fp32/cpu/deploy/model.onnx").read_text() == "artifacts/cpu/deploy"
    assert not (tmp_path / "artifacts-int8").joinpath("cpu").exists() and not (tmp_path / "report-int8.json").exists()
    assert (tmp_path / "report-fp32.json").read_text() == '{"deploy": "artifacts-fp32/cpu/deploy", "from": "the rebuild"}'


def test_a_rebuild_stays_deployed_unless_the_first_build_is_faster_beyond_the_noise(tmp_path) -> None:
    import hadmc_deploy.build.rebuild as rebuild

    ctx, first, second = _rebuilt_dir(tmp_path)
    within = rebuild.keep_faster_build(ctx, first, second, "fp32", timer=lambda ctx, rows, batch: ({"first": 1.0, "rebuild": 1.04}, 0.05))
    assert within is second and (tmp_path / "artifacts/cpu/deploy/model.onnx").read_text() == "artifacts/cpu/deploy"
    met = {**second, "decision": {**second["decision"], "verdict": {"exit_code": 0}}}

    def never(ctx, rows, batch):
        raise AssertionError("a rebuild that met its budget is not timed against the first build")

    assert rebuild.keep_faster_build(ctx, first, met, "fp32", timer=never) is met


def test_the_faster_build_is_chosen_by_timing_the_two_deployed_artifacts(tmp_path, monkeypatch) -> None:
    """The same choice with ONNX Runtime timing two real artifacts side by side: the first build's
    deploy is a 4-channel conv, the rebuild's a 256-channel one on the same 64x64 input, tens of
    times the work, so the first measures faster whatever the machine is doing."""
    from types import SimpleNamespace

    import torch

    import hadmc_deploy.build.rebuild as rebuild
    from hadmc_deploy.backends import BuildRequest, get
    from hadmc_deploy.plan import BuildPlan
    from hadmc_deploy.targets import cpu_profile, get_target
    from hadmc_deploy.ui import quiet_ui

    plan = BuildPlan(model=None, arch="x:y", arch_kwargs={}, input_shape=(1, 3, 64, 64), trust_model=False, target=get_target("cpu"),
                     out_dir=tmp_path, options={"speedup": 2.0})
    for where, channels in (("artifacts-int8/cpu", 4), ("artifacts/cpu", 256)):
        src = tmp_path / f"conv{channels}.onnx"
        torch.onnx.export(torch.nn.Conv2d(3, channels, 3, padding=1).eval(), (torch.zeros(1, 3, 64, 64),), str(src), dynamo=False,
                          input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        get("onnxruntime").build(BuildRequest(onnx_path=src, precision="fp32", out_dir=tmp_path / where / "deploy", target=cpu_profile()))
    for suffix in ("json", "md"):
        (tmp_path / f"report.{suffix}").write_text("artifacts/cpu/deploy")
    ctx = SimpleNamespace(plan=plan, ui=quiet_ui(), path=lambda p: tmp_path / p)
    monkeypatch.setattr(rebuild, "write_report", lambda ctx, report: report)  # the reports here are stand-ins
    monkeypatch.setattr(BuildPlan, "save", lambda plan: None)
    first = {"decision": {"deploy": "pruned-int8"}, "notes": []}
    second = {"decision": {"deploy": "pruned-fp32", "primary_batch": 1, "verdict": {"exit_code": 14}}, "notes": []}
    kept = []
    report = rebuild.keep_faster_build(ctx, first, second, "fp32", timer=lambda *a: kept.append(rebuild.time_interleaved(*a)) or kept[-1])
    (fastest, noise), = kept
    assert fastest["first"] < fastest["rebuild"] * (1 - noise)
    assert report["decision"]["deploy"] == "pruned-int8" and report["rebuild"]["kept_ms"] == fastest["first"]
    assert (tmp_path / "artifacts-fp32" / "cpu" / "deploy").is_dir() and (tmp_path / "report-fp32.md").read_text() == "artifacts-fp32/cpu/deploy"


def _stats(ms: float):  # noqa: ANN202
    from hadmc_deploy.backends import LatencyStats

    return LatencyStats(p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, min_ms=ms, runs=8, batch=1, warmup=2)


def _decide_ctx(check: dict, float_nodes: dict | None = None):  # noqa: ANN202
    from types import SimpleNamespace

    from hadmc_deploy.ui import quiet_ui

    return SimpleNamespace(plan=SimpleNamespace(precision="int8"), ui=quiet_ui(),
                           results={"latency check": check, "quantize": {"float_nodes": float_nodes or {}}})


CHECKED = {"checked": True, "batch": 1, "measured_speedup": 1.45, "noise": 0.10}


@pytest.mark.parametrize(("check", "float_nodes", "here", "disputed"), [
    (CHECKED, None, 1.00, True),  # the decide pass read the plan at 1.00x, the latency check 1.45x
    (CHECKED, None, 1.75, True),  # too fast is disputed too: an exit 0 on a lucky pass is as wrong
    (CHECKED, None, 1.30, False),  # within the larger noise (10%) and the margin
    (CHECKED, {"pruned": [{"node": "conv1"}]}, 1.00, False),  # the guard kept a layer in float: other graphs
    ({**CHECKED, "batch": 8}, None, 1.00, False),  # timed at another batch
    ({"checked": False}, None, 1.00, False),
])
def test_the_decision_is_timed_again_when_it_disputes_the_latency_checks_measurement(monkeypatch, check, float_nodes, here, disputed) -> None:  # noqa: ANN001
    """The latency check and the decide stage time the same two graphs (the original and the plan at
    the build's precision); a pass whose speedup lies further from the other than their noise allows
    is timed again and the decision reads both passes' rounds (fastest of 14)."""
    from hadmc_deploy.build import decision_timing as stage

    passes = []

    def rounds(ctx, rows, batch, n=7):  # noqa: ANN001, ANN202
        passes.append(batch)
        plan_ms = 1.0 / here if len(passes) == 1 else 1.0 / 1.45
        return {"baseline-int8": [_stats(1.0)] * n, "pruned-int8": [_stats(plan_ms)] * n}

    monkeypatch.setattr(stage, "interleaved_rounds", rounds)
    timed, why = stage.time_candidates(_decide_ctx(check, float_nodes), [], 1)
    assert len(passes) == (2 if disputed else 1)
    assert bool(why) == disputed and len(timed["pruned-int8"]) == 7 * len(passes)
    if disputed:
        assert "latency check" in why and f"{here:.2f}x" in why
        assert min(s.p50_ms for s in timed["pruned-int8"]) == pytest.approx(min(1.0 / here, 1.0 / 1.45))
