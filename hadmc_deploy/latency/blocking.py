"""Which plain convs run the blocked kernel off the step, and at what padded size.

The context fit splits every weighted layer into two regimes: "aligned" (the blocked kernel) and
"unaligned" (the generic one), each priced on its own curve over the layer's size. Counting a layer
aligned only when both channel counts are multiples of the step misplaced plain convs on ONNX
Runtime FP32 here: its blocked (NCHWc) conv pads the output channels up to the block, and takes any
input count that is a multiple of a finer step (4), padding it too. A demo-CNN plan's 44 -> 39 conv
ran NCHWc as 48 -> 48 (`ReorderInput`, then `nchwc.Conv` with 48 filters in the optimized graph)
at 0.090 ms; priced on the unaligned curve at 0.317 ms. Alone on one thread, at 14x14 and batch 32
(`tools/sweep_conv_channels.py`): 44 or 48 inputs to 39, 41 or 48 outputs 0.59-0.61 ms, 43 or 45
inputs 1.00-1.17 ms (`docs/latency_model.md`, "Method v19").

Both facts are read from the staircase probe, not assumed: the output sweep's "pad" shape (an
off-step output count costs what its padded count costs: the same kernel) and the input sweep's own
step (`alignment.probe_staircase` sweeps a plain conv's input axis too). A table whose probe saw no
padding keeps the both-axes rule; one that saw padding outputs but no finer input step counts a
conv's input aligned on the step itself.
"""

from __future__ import annotations

from typing import Any

from hadmc_deploy.latency.alignment import counts_aligned, size_fraction
from hadmc_deploy.latency.lut import Staircase
from hadmc_deploy.specs import LayerSpec, round_up

#: the ops the padding rule applies to: the plain convs the probe sweeps on both axes.
PADDED_OPS = ("conv",)


def conv_blocking(staircase: Staircase | None, step: int) -> dict[str, Any] | None:
    """{"in_step", "out_pad": True} when the probe showed a plain conv's blocked kernel padding its
    outputs at `step` (the output sweep's shape "pad" at that step); `in_step` is the input sweep's
    step (`input_step.detect_input_step`) where it is finer than `step` and divides it, else `step`
    (also where no input sweep was made). None when the probe showed no
    padding at `step` (the both-axes rule stands)."""
    conv = (staircase.per_op.get("conv") if staircase is not None else None) or {}
    if step <= 1 or conv.get("mode") != "pad" or int(conv.get("step", 1)) != step:
        return None
    inp = conv.get("input") or {}
    s_in = int(inp.get("step", step))
    return {"in_step": s_in if 1 < s_in < step and step % s_in == 0 else step, "out_pad": True}


def regime_and_size(spec: LayerSpec, full_in: int, full_out: int, step: int, blocking: dict[str, Any] | None = None) -> tuple[bool, float]:
    """(aligned, size) of a layer for the context's regimes: the padding rule for a plain conv under
    `blocking` (see `conv_blocking`), else both counts on `step` (`alignment.counts_aligned`) and
    its MACs fraction."""
    if blocking and spec.op in PADDED_OPS and step > 1:
        in_step = int(blocking.get("in_step", step))
        if spec.in_channels == full_in or spec.in_channels % in_step == 0:
            # the blocked kernel computes the padded channels: its size is its padded MACs
            padded = spec.with_channels(round_up(spec.in_channels, step), round_up(spec.out_channels, step)).macs()
            full = spec.with_channels(round_up(full_in, step), round_up(full_out, step)).macs()
            return True, padded / full if full > 0 else 1.0
        return False, size_fraction(spec, full_in, full_out)
    return counts_aligned(spec, full_in, full_out, step), size_fraction(spec, full_in, full_out)
