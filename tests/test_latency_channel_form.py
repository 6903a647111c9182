"""The grouped conv's channel form (hadmc_deploy/latency/channel_form.py): its fit, when the
context fit keeps it instead of the MACs-fraction curve, and how the predictor prices with it."""

from __future__ import annotations

import pytest

from hadmc_deploy.latency.channel_form import choose_form, fit_form, form_ms, shapes_vary
from hadmc_deploy.latency.context import macs_curve_ms as _curve
from hadmc_deploy.latency.predictor import context_layer_ms
from hadmc_deploy.specs import LayerSpec

# shapes the context fit profiles a grouped conv at: uniform, off-grid and the two crossed plans
SHAPES = [(1.0, 1.0), (0.7, 0.7), (0.5, 0.5), (0.3, 0.3), (0.75, 0.75), (0.45, 0.45), (0.85, 0.45), (0.45, 0.85)]


def test_fit_recovers_non_negative_coefficients():
    truth = [0.01, 0.12, 0.0, 0.15]
    coefficients = fit_form([(ci, co, form_ms(truth, ci, co)) for ci, co in SHAPES])
    assert coefficients == pytest.approx(truth, abs=1e-9)
    # a cost that falls with output channels cannot be fitted with a negative term
    falling = fit_form([(ci, co, 0.2 + 0.1 * ci - 0.05 * co) for ci, co in SHAPES])
    assert min(falling) >= 0.0


def test_form_is_kept_where_cost_follows_input_channels_more_than_macs():
    """What ONNX Runtime's unblocked grouped conv measured: time mostly in input channels."""
    points = [(ci, co, 0.01 + 0.12 * ci + 0.02 * co + 0.03 * ci * co) for ci, co in SHAPES]
    form = choose_form(points, _curve)
    assert form is not None
    # a shape no plan profiled: 0.45 in, 1.0 out
    truth = 0.01 + 0.12 * 0.45 + 0.02 + 0.03 * 0.45
    assert form_ms(form, 0.45, 1.0) == pytest.approx(truth, rel=0.02)
    assert abs(_curve(points, 0.45, 1.0) / truth - 1) > 0.1  # what the curve would have priced


def test_curve_is_kept_where_cost_follows_macs():
    points = [(ci, co, 0.2 * ci * co) for ci, co in SHAPES]
    assert choose_form(points, _curve) is None


def test_form_needs_shapes_that_vary_channels_apart():
    uniform = [(s, s, 0.01 + 0.2 * s) for s, _ in SHAPES[:6]]
    assert not shapes_vary(uniform)
    assert choose_form(uniform, _curve) is None
    assert choose_form([(ci, co, 0.1 * ci) for ci, co in SHAPES[-3:]], _curve) is None  # too few points


def test_predictor_prices_the_regime_with_its_form():
    spec = LayerSpec("gconv", 32, 96, kernel=(3, 3), padding=(1, 1), groups=4, in_hw=(16, 16), out_hw=(16, 16))
    factors = {"full_in": 64, "full_out": 128, "aligned": 1.0, "unaligned": 1.0,
               "aligned_ms_curve": [[1.0, 0.2]], "unaligned_ms_curve": [[0.1, 0.05], [1.0, 0.3]],
               "unaligned_form": [0.01, 0.12, 0.0, 0.15]}
    # 32 -> 96 in 4 groups: 8 / 24 channels per group, off the step 16: the unaligned regime
    assert context_layer_ms(factors, spec, 16, 1.0) == pytest.approx(0.01 + 0.12 * 0.5 + 0.15 * 0.5 * 0.75)
    without = {k: v for k, v in factors.items() if k != "unaligned_form"}
    assert context_layer_ms(without, spec, 16, 1.0) != pytest.approx(context_layer_ms(factors, spec, 16, 1.0))
