"""The padding kernel's regimes (latency/blocking.py, latency/input_step.py): which plain convs run
the blocked kernel off the step, read from the staircase probe, and at what size they are priced."""

from __future__ import annotations

import random

import pytest

from hadmc_deploy.latency.blocking import conv_blocking, regime_and_size
from hadmc_deploy.latency.input_step import detect_input_step
from hadmc_deploy.latency.lut import Staircase
from hadmc_deploy.latency.predictor import context_layer_ms
from hadmc_deploy.specs import LayerSpec

CONV = LayerSpec("conv", 64, 128, (3, 3), (2, 2), (1, 1), in_hw=(14, 14), out_hw=(7, 7), activation="relu")


def _ceil(c: int, s: int) -> int:
    return -(-c // s) * s


def _sweep(cost, seed: int = 0) -> dict[int, float]:  # noqa: ANN001
    """Input counts 32..64 at `cost(c)`, each with +-7% noise (timings on a shared machine)."""
    rng = random.Random(seed)
    return {c: cost(c) * rng.uniform(0.93, 1.07) for c in range(32, 65)}


@pytest.mark.parametrize("seed", range(5))
def test_input_step_of_a_kernel_padding_multiples_of_four(seed):
    """Multiples of 4 cost their count padded to 16, the others 1.5x their line (what ONNX Runtime's
    FP32 NCHWc conv measured here, 43 -> 39 at 0.502 ms against 44 -> 39 at 0.306 ms): 4, through noise."""
    assert detect_input_step(_sweep(lambda c: _ceil(c, 16) * 0.01 if c % 4 == 0 else 1.5 * c * 0.01, seed), 16) == 4


@pytest.mark.parametrize(("cost", "expected"), [
    (lambda c: _ceil(c, 16) * 0.01 if c % 8 == 0 else 1.5 * c * 0.01, 8),
    (lambda c: _ceil(c, 16) * 0.01, 16),  # every input count pads: no finer step is evidenced
    (lambda c: c * 0.01, 16),  # a smooth line
    (lambda c: 2.0 * c * 0.01 if c % 16 else c * 0.01, 16),  # only the step's multiples are fast
    (lambda c: _ceil(c, 16) * 0.01 if c % 4 == 0 and (c % 8 or c % 16 == 0) else 1.5 * c * 0.01, 16),  # no clean split
])
def test_input_step_other_shapes(cost, expected):
    assert detect_input_step(_sweep(cost), 16) == expected


def test_blocking_is_read_only_from_a_padding_probe():
    def stair(mode: str, step: int = 16, input_step: int | None = 4) -> Staircase:
        conv = {"step": step, "penalty": 1.0, "mode": mode, "axis": "out"}
        if input_step is not None:
            conv["input"] = {"step": input_step}
        return Staircase(step, 1.0, {"conv": conv}, mode)

    assert conv_blocking(stair("pad"), 16) == {"in_step": 4, "out_pad": True}
    assert conv_blocking(stair("pad", input_step=None), 16) == {"in_step": 16, "out_pad": True}  # no input sweep
    assert conv_blocking(stair("pad", input_step=3), 16) == {"in_step": 16, "out_pad": True}  # does not divide the step
    assert conv_blocking(stair("pad", input_step=16), 16) == {"in_step": 16, "out_pad": True}  # no finer step read
    assert conv_blocking(stair("line"), 16) is None  # unaligned counts leave the kernel: both axes count
    assert conv_blocking(stair("pad", step=8), 16) is None  # padding at another step than the context's
    assert conv_blocking(None, 16) is None and conv_blocking(stair("pad"), 1) is None


def test_a_conv_whose_input_is_on_the_input_step_is_aligned_at_its_padded_size():
    """44 -> 39 of a 64 -> 128 conv ran the blocked kernel as 48 -> 48 (ONNX Runtime's optimized
    graph); 43 -> 39 ran the generic one. Without blocking both are unaligned at their MACs."""
    blocking = {"in_step": 4, "out_pad": True}
    assert regime_and_size(CONV.with_channels(44, 39), 64, 128, 16, blocking) == (True, pytest.approx(48 * 48 / (64 * 128)))
    assert regime_and_size(CONV.with_channels(43, 39), 64, 128, 16, blocking) == (False, pytest.approx(43 * 39 / (64 * 128)))
    assert regime_and_size(CONV.with_channels(44, 39), 64, 128, 16, None) == (False, pytest.approx(44 * 39 / (64 * 128)))
    assert regime_and_size(CONV.with_channels(48, 64), 64, 128, 16, None) == (True, pytest.approx(0.375))
    first = LayerSpec("conv", 3, 32, (3, 3), (1, 1), (1, 1), in_hw=(28, 28), out_hw=(28, 28))
    assert regime_and_size(first.with_channels(3, 23), 3, 32, 16, blocking) == (True, pytest.approx(1.0))  # the image: padded to 32
    assert regime_and_size(CONV.with_channels(44, 39), 64, 128, 1, blocking)[0]  # step 1: every count aligned
    g = LayerSpec("gconv", 64, 128, (3, 3), (1, 1), (1, 1), groups=4, in_hw=(16, 16), out_hw=(16, 16))
    assert regime_and_size(g.with_channels(64, 96), 64, 128, 16, blocking) == (False, pytest.approx(0.75))  # grouped: per group, as before


def test_the_predictor_prices_a_padded_conv_on_the_aligned_curve():
    factors = {"full_in": 64, "full_out": 128, "aligned": 1.0, "unaligned": 2.0, "blocking": {"in_step": 4, "out_pad": True},
               "aligned_ms_curve": [[0.25, 0.2], [1.0, 0.8]], "unaligned_ms_curve": [[0.25, 0.6], [1.0, 2.4]]}
    size = 48 * 48 / (64 * 128)
    assert context_layer_ms(factors, CONV.with_channels(44, 39), 16, 99.0) == pytest.approx(0.2 + 0.6 * (size - 0.25) / 0.75)
    odd = 43 * 39 / (64 * 128)
    assert context_layer_ms(factors, CONV.with_channels(43, 39), 16, 99.0) == pytest.approx(0.6 + 1.8 * (odd - 0.25) / 0.75)
    without = {k: v for k, v in factors.items() if k != "blocking"}
    assert context_layer_ms(without, CONV.with_channels(44, 39), 16, 99.0) == pytest.approx(0.6 + 1.8 * (44 * 39 / (64 * 128) - 0.25) / 0.75)
