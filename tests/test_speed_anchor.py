"""The speed anchor (latency/speed_anchor.py): the machine's fast state, its persisted reference,
and the extra passes a measurement takes when none of a layer's passes ran in a fast window."""

from __future__ import annotations

import json

import pytest

from hadmc_deploy.latency.repeat import time_interleaved
from hadmc_deploy.latency.speed_anchor import SpeedAnchor, anchor_model_bytes, machine_anchor, machine_key
from hadmc_deploy.specs import LayerSpec


def scripted_anchor(times: list[float], reference: float = 1.0) -> SpeedAnchor:
    """An anchor whose samples are `times` in turn (then the last one), sampled on every call."""
    queue = list(times)

    def run() -> float:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return SpeedAnchor(threads=1, reference_ms=reference, gap_s=-1.0, window_s=0.0, _run=run)


def spec(out: int) -> LayerSpec:
    return LayerSpec(op="conv", in_channels=8, out_channels=out, kernel=(3, 3), in_hw=(8, 8), batch=1)


def test_quiet_means_within_tolerance_of_the_reference():
    anchor = scripted_anchor([1.05, 1.3, 1.09])
    assert anchor.is_quiet() and not anchor.is_quiet() and anchor.is_quiet()
    assert anchor.slowdown() == pytest.approx(1.09)  # the median sample over the reference


def test_a_layer_timed_only_in_slow_windows_gets_extra_passes():
    calls: dict[int, int] = {}

    def prepare(s: LayerSpec):  # noqa: ANN202
        def run(n: int) -> list[float]:
            calls[s.out_channels] = calls.get(s.out_channels, 0) + 1
            return [1.0] * n

        return run

    # 2 layers x 2 passes slow (4 checks), then fast: each layer gets exactly one extra pass
    anchor = scripted_anchor([2.0, 2.0, 2.0, 2.0, 1.0])
    timed = time_interleaved([spec(8), spec(16)], prepare, passes=2, runs_per_pass=3, anchor=anchor, max_extra_passes=4)
    assert calls == {8: 3, 16: 3} and all(r.quiet for _, r in timed)
    assert (anchor.gated, anchor.gated_quiet) == (2, 2)  # what the table records and warns on
    # never fast: every layer gets all extra passes and says so
    calls.clear()
    slow = scripted_anchor([2.0])
    timed = time_interleaved([spec(8)], prepare, passes=2, runs_per_pass=3, anchor=slow, max_extra_passes=4)
    assert calls == {8: 6} and timed[0][1].quiet is False and slow.quiet_fraction() == 0.0
    # no anchor: the passes asked for, no verdict
    calls.clear()
    timed = time_interleaved([spec(8)], prepare, passes=2, runs_per_pass=3)
    assert calls == {8: 2} and timed[0][1].quiet is None


def test_the_machine_reference_is_persisted_and_only_lowered(tmp_path):
    store = tmp_path / "anchor.json"
    device = {"kind": "cpu", "cpu_model": "test"}
    first = machine_anchor(store, device, "1.0", 1, calibrate_s=0.05)
    assert first.reference_ms > 0 and first.calibrated_ms == first.reference_ms
    key = machine_key(device, "1.0", 1, "wall")
    assert json.loads(store.read_text())[key]["reference_ms"] == pytest.approx(first.reference_ms)
    store.write_text(json.dumps({key: {"reference_ms": 1e-6}}))  # a faster phase seen before: kept
    assert machine_anchor(store, device, "1.0", 1, calibrate_s=0.05).reference_ms == pytest.approx(1e-6)
    store.write_text(json.dumps({key: {"reference_ms": 1e6}}))  # slower than now: lowered and saved
    lowered = machine_anchor(store, device, "1.0", 1, calibrate_s=0.05)
    assert lowered.reference_ms < 1e6 and json.loads(store.read_text())[key]["reference_ms"] == pytest.approx(lowered.reference_ms)
    assert machine_key(device, "1.0", 2, "wall") != key  # another thread count is another reference


def test_the_anchor_model_is_the_same_bytes_every_time():
    assert anchor_model_bytes() == anchor_model_bytes()
