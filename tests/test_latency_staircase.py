"""The measured staircase: step detection, penalty pricing, regularised fits, feedback, self-check."""

from __future__ import annotations

import random

import pytest

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.latency.alignment import detect_step
from hadmc_deploy.latency.lut import (
    ContextCorrection,
    Correction,
    LatencyTable,
    LutMeta,
    Staircase,
    read_table,
)
from hadmc_deploy.latency.predictor import (
    LutLatencyModel,
    context_factor,
    context_layer_ms,
    fit_regularised,
    interp_context_ms,
)
from hadmc_deploy.latency.selfcheck import self_check
from hadmc_deploy.specs import LayerSpec

BASE = LayerSpec("conv", 32, 32, (3, 3), (1, 1), (1, 1), in_hw=(16, 16), out_hw=(16, 16), activation="relu")


def _ceil(c, s):
    return -(-c // s) * s


def test_detects_a_padding_staircase():
    times = {c: 1.0 + 0.01 * _ceil(c, 16) for c in range(96, 129)}
    step, penalty, mode = detect_step(times)
    assert (step, mode) == (16, "pad") and penalty == pytest.approx(1.0, abs=0.01)


def test_detects_unaligned_counts_leaving_the_blocked_kernel():
    # aligned counts on a line, every other count 1.5x that line (ONNX Runtime's NCHW fallback)
    times = {c: (0.02 * c) * (1.0 if c % 16 == 0 else 1.5) for c in range(32, 65)}
    step, penalty, mode = detect_step(times)
    assert (step, mode) == (16, "line") and penalty == pytest.approx(1.5, rel=0.02)


def test_no_step_on_a_smooth_line_and_no_monotonicity_assumed():
    assert detect_step({c: 0.02 * c for c in range(32, 65)})[0] == 1
    # INT8-like: the aligned 40 is slower than 48 (not monotone); a step of 8 is still found
    times = {c: (0.03 * c) * (1.0 if c % 8 == 0 else 1.6) for c in range(32, 65)}
    times[40] *= 1.3
    assert detect_step(times)[0] == 8


# Two sweeps of the demo CNN's layer3.0.conv1 at 96x96 (out channels 96..128, ms, one thread's
# CPU time) measured on an AVX-512 Xeon here, on which the old rule answered a step that the next
# probe minutes later did not repeat (scratch probes; docs/latency_model.md).
_FP32_NO_STAIR = [0.1268, 0.1436, 0.1412, 0.1344, 0.1363, 0.1418, 0.1361, 0.1414, 0.135, 0.1588, 0.141, 0.1458, 0.141, 0.1464, 0.1428, 0.1485, 0.1563,
                  0.1612, 0.1896, 0.1537, 0.1913, 0.155, 0.2189, 0.1886, 0.1718, 0.1701, 0.1512, 0.1604, 0.1538, 0.1563, 0.1616, 0.1598, 0.15]
_INT8_INVERTED = [0.0404, 0.0387, 0.0386, 0.0394, 0.044, 0.0389, 0.0389, 0.0396, 0.0438, 0.039, 0.0387, 0.0397, 0.0439, 0.0396, 0.0395, 0.0401, 0.0441,
                  0.0402, 0.0407, 0.041, 0.0484, 0.0409, 0.0407, 0.0416, 0.0482, 0.0412, 0.0413, 0.0415, 0.0486, 0.0416, 0.0425, 0.0431, 0.0482]


def test_a_step_seen_only_at_the_windows_ends_is_no_step():
    # old rule: step 32 "line", penalty 1.087, from the window's two ends alone
    assert detect_step(dict(zip(range(96, 129), _FP32_NO_STAIR, strict=True)))[0] == 1


def test_an_inverted_ripple_is_no_reason_to_round_up():
    # multiples of 4 ran ~10% slower than their neighbours (old rule: step 4 "line", penalty 0.89)
    assert detect_step(dict(zip(range(96, 129), _INT8_INVERTED, strict=True)))[0] == 1
    synthetic = {c: 0.02 * c * (1.1 if c % 8 == 0 else 1.0) for c in range(32, 65)}
    assert detect_step(synthetic)[0] == 1  # neither "line" (penalty < 1) nor "pad" (far below its padded count)


def test_a_padding_staircase_with_noise_is_still_found():
    rng = random.Random(0)
    times = {c: (0.12 + 0.001 * _ceil(c, 16)) * rng.uniform(0.98, 1.02) for c in range(96, 129)}  # 10% stairs, 2% noise
    step, _, mode = detect_step(times)
    assert (step, mode) == (16, "pad")


def _table(step: int = 16, penalty: float = 1.5, mode: str = "line") -> LatencyTable:
    table = LatencyTable(meta=LutMeta("cpu", "onnxruntime", "x", {}, 2, 1, "fp32", 8))
    for cin in (16, 32, 48, 64):
        for cout in (16, 32, 48, 64):
            table.add(BASE.with_channels(cin, cout), 0.001 * cin * cout, 0.0, 1)
    table.staircase = Staircase(step, penalty, {"conv": {"step": step, "penalty": penalty, "mode": mode}}, mode)
    return table


def test_unaligned_width_is_priced_with_the_measured_penalty():
    model = LutLatencyModel(_table())
    aligned = model.predict([BASE.with_channels(32, 48)]).total_ms
    unaligned = model.predict([BASE.with_channels(32, 40)]).total_ms
    assert aligned == pytest.approx(0.001 * 32 * 48)
    assert unaligned == pytest.approx(1.5 * 0.001 * 32 * 40)  # line x penalty, not rounded up to 48
    assert unaligned > aligned  # slower than the next aligned count: why round_to matters
    pad = LutLatencyModel(_table(mode="pad", penalty=1.0)).predict([BASE.with_channels(32, 40)]).total_ms
    assert pad == pytest.approx(aligned)


def test_points_just_off_the_grid_set_their_familys_penalty():
    table = _table(penalty=1.5)
    table.add(BASE.with_channels(64, 63), 1.2 * 0.001 * 64 * 63, 0.0, 1, role="off_grid")
    model = LutLatencyModel(table)
    assert model.predict([BASE.with_channels(64, 40)]).total_ms == pytest.approx(1.2 * 0.001 * 64 * 40)


def test_alignment_comes_from_the_table(tmp_path):
    table = _table(step=16)
    assert table.alignment() == 16 and table.alignment("fp32") == 16
    with pytest.raises(LatencyModelError):
        table.alignment("int8")
    table.staircase = None
    assert table.alignment() == 8  # no probe: the target's assumed alignment


def test_schema_two_round_trip_and_schema_one_still_reads(tmp_path):
    table = _table()
    table.context = ContextCorrection(["a"], [{"aligned": 0.5, "unaligned": 0.9, "full_in": 32, "full_out": 32}], 0.1, 16)
    table.feedback = Correction(1.1, 0.0)
    path = tmp_path / "t.json"
    table.save(path)
    assert read_table(path).to_dict() == table.to_dict()
    old = table.to_dict()
    old["schema_version"] = 1
    for key in ("staircase", "context", "feedback"):
        old.pop(key)
    assert LatencyTable.from_dict(old).staircase is None


def test_context_factor_regimes():
    f = {"aligned": 0.5, "unaligned": 0.9, "full_in": 3, "full_out": 64}
    assert context_factor(f, BASE.with_channels(3, 48), 16) == 0.5  # 3 is the full (fixed) input
    assert context_factor(f, BASE.with_channels(3, 47), 16) == 0.9


def test_regularised_fit_refuses_ill_conditioned_plans():
    # three plans whose layer sums barely differ (issue 13 saw scale 2.49, offset -13.35 ms)
    fit = fit_regularised([8.22, 7.87, 7.92], [7.1, 5.0, 7.6])
    assert fit.offset_ms == 0.0 and fit.how.startswith("ratio")
    assert 0.33 <= fit.scale <= 3.0
    assert fit_regularised([1.0], [100.0]).scale == 3.0  # clipped, never absurd
    good = fit_regularised([1.0, 2.0, 4.0], [1.7, 3.2, 6.2])
    assert good.how == "least squares" and good.scale == pytest.approx(1.5, rel=0.05)


def test_self_check_feeds_a_miss_back_and_leaves_a_hit_alone():
    model = LutLatencyModel(_table())
    full, small = [BASE.with_channels(64, 64)], [BASE.with_channels(32, 32)]
    p_full, p_small = model.predict(full).total_ms, model.predict(small).total_ms
    check, same = self_check(model, {"baseline": (full, p_full * 1.05), "plan": (small, p_small * 0.97)})
    assert not check.flagged and same is model
    check, corrected = self_check(model, {"baseline": (full, p_full * 2.0), "plan": (small, p_small * 2.0)})
    assert check.flagged and check.corrected and corrected is not model
    assert corrected.predict(full).total_ms == pytest.approx(2.0 * p_full, rel=0.02)
    assert model.predict(full).total_ms == pytest.approx(p_full)  # the original is untouched
    assert check.to_dict()["max_abs_error"] == pytest.approx(0.5, rel=0.01)


def test_context_factor_follows_the_curve_over_the_layer_size():
    """A layer's factor is read off its regime's curve at its MACs fraction: linear between the
    profiled sizes, flat beyond them; a table without curves keeps its single factor."""
    curve = [[0.25, 0.9], [1.0, 0.5]]
    f = {"aligned": 0.7, "unaligned": 1.2, "full_in": 64, "full_out": 64, "aligned_curve": curve, "unaligned_curve": [[0.5, 1.4]]}
    assert context_factor(f, BASE.with_channels(64, 64), 16) == pytest.approx(0.5)  # full width
    assert context_factor(f, BASE.with_channels(64, 32), 16) == pytest.approx(0.9 + (0.5 - 0.9) * (0.5 - 0.25) / 0.75)
    assert context_factor(f, BASE.with_channels(16, 16), 16) == pytest.approx(0.9)  # 1/16 of the MACs: flat
    assert context_factor(f, BASE.with_channels(64, 47), 16) == pytest.approx(1.4)  # unaligned curve
    assert context_factor({k: v for k, v in f.items() if not k.endswith("_curve")}, BASE.with_channels(64, 32), 16) == 0.7


def test_context_cost_interpolates_the_profiled_times_over_the_layer_size():
    """measured-v10 tables price a layer from its regime's profiled in-context times (not factor x
    isolated price): linear between sizes; above the largest the line goes on but never below the
    last point; below the smallest the line, floored at the cost proportional to MACs; a table
    with factor curves only keeps factor x table price."""
    f = {"aligned": 0.7, "unaligned": 1.2, "full_in": 64, "full_out": 64, "aligned_curve": [[0.25, 0.9], [1.0, 0.5]],
         "unaligned_curve": [[0.5, 1.4]], "aligned_ms_curve": [[0.25, 0.4], [0.5, 0.6], [1.0, 1.0]], "unaligned_ms_curve": [[0.2, 0.5], [0.5, 0.8]]}
    assert context_layer_ms(f, BASE.with_channels(64, 64), 16, 99.0) == pytest.approx(1.0)  # the table price is not used
    assert context_layer_ms(f, BASE.with_channels(64, 48), 16, 99.0) == pytest.approx(0.6 + 0.4 * (0.75 - 0.5) / 0.5)
    assert context_layer_ms(f, BASE.with_channels(16, 32), 16, 99.0) == pytest.approx(max(0.4 + 0.8 * (0.125 - 0.25), 0.4 * 0.5))
    assert context_layer_ms(f, BASE.with_channels(16, 16), 16, 99.0) == pytest.approx(0.4 + 0.8 * (1 / 16 - 0.25))
    assert interp_context_ms(1 / 16, [(0.25, 0.4), (0.5, 1.0)]) == pytest.approx(0.4 / 4)  # the line would go below MACs
    assert context_layer_ms(f, BASE.with_channels(64, 63), 16, 99.0) == pytest.approx(0.8 + 1.0 * (63 / 64 - 0.5))  # unaligned, beyond
    assert interp_context_ms(0.9, [(0.2, 0.5), (0.5, 0.3)]) == pytest.approx(0.3)  # falling: flat beyond the last point
    assert interp_context_ms(0.25, [(0.5, 0.8)]) == pytest.approx(0.4)  # one point: proportional
    old = {k: v for k, v in f.items() if not k.endswith("_ms_curve")}
    assert context_layer_ms(old, BASE.with_channels(64, 64), 16, 2.0) == pytest.approx(0.5 * 2.0)


def test_grouped_conv_regime_counts_channels_per_group():
    """A grouped conv is aligned when its channels per group are multiples of the step (ONNX
    Runtime blocks it only then); plain and depthwise convs count their channels."""
    from hadmc_deploy.latency.alignment import counts_aligned

    g = LayerSpec("gconv", 64, 128, (3, 3), (1, 1), (1, 1), groups=4, in_hw=(16, 16), out_hw=(16, 16))
    assert counts_aligned(g, 64, 128, 16)  # full width
    assert counts_aligned(g.with_channels(64, 64), 64, 128, 16)  # 16 per group
    assert not counts_aligned(g.with_channels(64, 96), 64, 128, 16)  # 96 = 6 x 16, but 24 per group
    assert counts_aligned(g.with_channels(64, 96), 64, 128, 8)
    assert counts_aligned(BASE.with_channels(32, 48), 32, 64, 16) and not counts_aligned(BASE.with_channels(32, 40), 32, 64, 16)
    dw = LayerSpec("dwconv", 64, 64, (3, 3), (1, 1), (1, 1), groups=64, in_hw=(16, 16), out_hw=(16, 16))
    assert counts_aligned(dw.with_channels(48, 48), 64, 64, 16) and not counts_aligned(dw.with_channels(40, 40), 64, 64, 16)


@pytest.mark.parametrize(("isa", "probed", "backend", "expected"), [
    ("avx512_vnni", 4, "onnxruntime", 16),  # finer than the blocked width and dividing it: the blocked width
    ("avx512_vnni", 8, "onnxruntime", 16),
    ("avx512_vnni", 16, "onnxruntime", 16),
    ("avx2", 16, "onnxruntime", 16),  # coarser than the block: the probe's (measure_table may profile 8 again)
    ("avx2", 4, "onnxruntime", 8),
    ("avx512_vnni", 12, "onnxruntime", 12),  # does not divide it
    ("avx512_vnni", 4, "tensorrt", 4),  # a GPU has no NCHWc block
    ("avx512_vnni", 1, "onnxruntime", 16),  # no step in isolation: the blocked width
])
def test_context_profiles_the_blocked_width_over_a_finer_probe_step(isa, probed, backend, expected):
    from hadmc_deploy.latency.context_plans import context_step

    table = LatencyTable(LutMeta("cpu", backend, "x", {"isa": isa}, 1, 1, "int8", 8))
    table.staircase = Staircase(probed, 1.3, {})
    assert context_step(table) == expected


def test_calibration_plans_cover_sizes_and_both_regimes():
    """Profiled plans: full, uniform plans on the step's grid, and odd (off every step) plans."""
    from torch import nn

    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.latency.context_plans import calibration_plans

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 48, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10)).eval()
    graph = trace(model, (1, 3, 16, 16))
    plans = calibration_plans(graph, 16)
    assert plans["full"] == graph.full_widths()
    aligned = [p for n, p in plans.items() if n.startswith("aligned")]
    offgrid = [p for n, p in plans.items() if n.startswith("offgrid")]
    assert len(aligned) >= 2 and len(offgrid) == 3
    assert all(w % 16 == 0 for p in aligned for w in p.values())
    assert all(w % 2 == 1 for p in offgrid for w in p.values())
    assert len({tuple(sorted(p.items())) for p in plans.values()}) == len(plans)  # no plan profiled twice
    assert not any(n.startswith("offgrid") for n in calibration_plans(graph, 1))  # no step: no regimes
    assert not any(n.startswith(("pergroup", "crossed")) for n in plans)  # no grouped conv


def test_calibration_plans_profile_grouped_convs_aligned_per_group():
    """A grouped conv's aligned regime needs its channels per group on the step: extra plans at
    multiples of groups x step, beside the plans at multiples of the step (unaligned per group)."""
    from torch import nn

    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.latency.alignment import counts_aligned
    from hadmc_deploy.latency.context_plans import calibration_plans

    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 256, 3, padding=1, groups=4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()
    graph = trace(model, (1, 3, 16, 16))
    plans = calibration_plans(graph, 16)
    per_group = [p for n, p in plans.items() if n.startswith("pergroup")]
    assert per_group
    gconv = next(layer for layer in graph.layers if layer.spec.op == "gconv")
    full = graph.layer_specs()[graph.layers.index(gconv)]
    for widths in per_group:
        spec = graph.layer_specs(widths)[graph.layers.index(gconv)]
        assert counts_aligned(spec, full.in_channels, full.out_channels, 16) and spec.macs() < full.macs()
    assert any(not counts_aligned(graph.layer_specs(p)[graph.layers.index(gconv)], full.in_channels, full.out_channels, 16)
               for n, p in plans.items() if n.startswith("aligned"))
    # the crossed plans: the grouped conv's input and output channels at different fractions, both ways
    crossed = [graph.layer_specs(p)[graph.layers.index(gconv)] for n, p in plans.items() if n.startswith("crossed")]
    assert len(crossed) == 2
    ratios = sorted((s.in_channels / full.in_channels) / (s.out_channels / full.out_channels) for s in crossed)
    assert ratios[0] < 0.8 and ratios[1] > 1.25


@pytest.mark.parametrize(
    ("probe_step", "context_step", "penalty", "expected"),
    [
        (1, 16, 1.6, 16),  # the probe found no step, the deployed chain did (penalty > 10%)
        (1, 16, 1.04, 1),
        (8, 8, 2.0, 8),  # a probe's step confirmed in context
        (8, 8, 0.7, 8),  # not confirmed, and no other step profiled: the probe's stands
        # measure_table profiles the blocked width again when the deployed graphs do not pay for the
        # probe's step (an INT8 probe found 4, odd widths then measured x0.63 of that price)
        (4, 16, 2.2, 16),
        (4, 16, 1.05, 4),
    ],
)
def test_alignment_takes_the_context_step_only_when_leaving_it_costs(probe_step, context_step, penalty, expected):
    table = _table()
    table.staircase = Staircase(probe_step, 1.3)
    table.context = ContextCorrection(["a"], [{"aligned": 0.5, "unaligned": 0.9}], 0.0, context_step, unaligned_penalty=penalty)
    assert table.alignment() == expected
    assert ContextCorrection.from_dict(table.context.to_dict()).unaligned_penalty == penalty


def test_scale_only_feedback_keeps_the_ratio_and_no_offset():
    model = LutLatencyModel(_table())
    full, small = [BASE.with_channels(64, 64)], [BASE.with_channels(32, 32)]
    p_full, p_small = model.predict(full).total_ms, model.predict(small).total_ms
    _, both = self_check(model, {"baseline": (full, p_full * 0.8 + 0.5), "plan": (small, p_small * 0.8 + 0.5)})
    assert both.table.feedback.offset_ms != 0.0  # two points pin an offset down
    _, scale = self_check(model, {"baseline": (full, p_full * 0.8 + 0.5), "plan": (small, p_small * 0.8 + 0.5)}, scale_only_feedback=True)
    fb = scale.table.feedback
    assert fb.offset_ms == 0.0 and fb.scale == pytest.approx(((0.8 * p_full + 0.5) / p_full + (0.8 * p_small + 0.5) / p_small) / 2, rel=1e-6)
