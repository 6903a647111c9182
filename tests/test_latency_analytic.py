"""Analytic (roofline) model: labelled analytic, monotone in channels, staircase at the alignment."""

from __future__ import annotations

from hadmc_deploy.latency import AnalyticLatencyModel
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import get_target

CONV = LayerSpec("conv", 64, 64, (3, 3), (1, 1), (1, 1), in_hw=(56, 56), out_hw=(56, 56))


def test_monotone_in_channels_and_labelled():
    for name in ("cpu", "t4"):
        model = AnalyticLatencyModel(get_target(name))
        prices = [model.layer_ms(CONV.with_channels(64, c)) for c in range(1, 257)]
        assert all(b >= a for a, b in zip(prices, prices[1:], strict=False))
        pred = model.predict([CONV, LayerSpec("add", 64, 64, in_hw=(56, 56), out_hw=(56, 56), n_inputs=2)])
        assert pred.source == "analytic" and set(pred.per_layer_source) == {"analytic"}
        assert pred.total_ms == sum(pred.per_layer_ms) and all(p > 0 for p in pred.per_layer_ms)
        assert any("not measured" in n for n in pred.notes)


def test_alignment_padding_makes_steps():
    model = AnalyticLatencyModel(get_target("t4"))  # int8 aligns to 32 on the T4
    spec = LayerSpec("conv", 256, 256, (3, 3), (1, 1), (1, 1), in_hw=(56, 56), out_hw=(56, 56), precision="int8")
    assert model.layer_ms(spec.with_channels(256, 225)) == model.layer_ms(spec.with_channels(256, 256))
    assert model.layer_ms(spec.with_channels(256, 224)) < model.layer_ms(spec.with_channels(256, 225))
