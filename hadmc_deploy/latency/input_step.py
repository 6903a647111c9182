"""The input step of a conv kernel that pads: which input channel counts it takes.

ONNX Runtime's blocked FP32 conv here pads its output channels up to the block and takes any input
count on a finer step (4), padding it too; other input counts run the generic kernel: 1.7-1.9x the
blocked time on a conv of the demo CNN at batch 32, 1-17% on one of ResNet-18 at batch 1
(`tools/sweep_conv_channels.py`, docs/latency_model.md "Method v19"). The staircase probe sweeps such a conv's inputs
(`alignment.probe_staircase`), and this reads the step from the sweep; latency/blocking.py prices
with it.
"""

from __future__ import annotations

from hadmc_deploy.specs import round_up

#: input steps finer than the output's that the input sweep tries, finest first.
INPUT_STEPS = (2, 4, 8)
#: an input count runs the padding kernel when it costs at most this much over its padded count
#: (the generic kernel: 1.7-1.9x on a demo-CNN conv at batch 32; below this, the gap is too small
#: to matter and too close to the noise to read).
PAD_TOLERANCE = 0.15
#: a finer input step is read only when at least this share of its multiples pads and at most
#: 1 - this share of the other counts does: a clean split, else no finer step.
CLEAN_SPLIT = 0.75


def detect_input_step(times: dict[int, float], step: int) -> int:
    """The finest input step whose multiples a padding kernel takes, from unit-step input-sweep times
    {input channels: ms} of a conv whose outputs pad at `step`; `step` when no finer step splits
    the counts cleanly.

    A step s is read when the counts on it (off `step`) cost at most PAD_TOLERANCE over their count
    padded to `step` (the kernel pads them) and the other counts cost more than PAD_TOLERANCE over
    the next multiple of s, which pads to the same count (they leave the kernel), each by CLEAN_SPLIT: a
    threshold per count, not a fit, so one noisy count moves a share, not the answer. Why not
    `alignment.detect_step`: on two input sweeps of one conv it answered 4, then 2 (a line through
    zigzagging multiples of 2 fitted as well as the step-4 one)."""
    lo, hi = min(times), max(times)
    inner = [c for c in times if lo < c < hi and c % step and round_up(c, step) in times]
    pads = {c: times[c] <= (1.0 + PAD_TOLERANCE) * times[round_up(c, step)] for c in inner}
    for s in INPUT_STEPS:
        if s >= step or step % s:
            continue
        on = [pads[c] for c in inner if c % s == 0]
        off = [times[c] > (1.0 + PAD_TOLERANCE) * times[round_up(c, s)] for c in inner if c % s and round_up(c, s) in times]
        if on and off and sum(on) >= CLEAN_SPLIT * len(on) and sum(off) >= CLEAN_SPLIT * len(off):
            return s
    # no "any count" answer: where the generic kernel is barely slower (a small conv at batch 1:
    # 10-15%) every count looks padded, and calling all of them aligned would price every odd
    # input on the aligned curve of layers where the gap is wide
    return step

