"""latency.floor: the fastest of many short interleaved rounds, over a minimum span."""

from __future__ import annotations

import itertools

import numpy as np
from onnx import TensorProto, helper

from hadmc_deploy.latency.floor import FloorTiming, floor_times, session_timer
from hadmc_deploy.latency.repeat import measuring_session


def test_a_slow_phase_does_not_move_the_floor() -> None:
    """Two models timed in the same rounds: a phase where everything runs 1.5x slower (the
    second vCPU taken) leaves each model's floor, and their ratio, at the fast phase's."""
    phase = itertools.cycle([1.5] * 5 + [1.0] * 2)
    factor = {"v": 1.0}

    def advance(_: int) -> float:
        factor["v"] = next(phase)
        return 2.0 * factor["v"]

    timed = floor_times({"a": advance, "b": lambda n: 1.0 * factor["v"]}, min_rounds=14, min_span_s=0.0)
    assert len(timed["a"].round_ms) == 14
    assert timed["a"].floor_ms == 2.0 and timed["b"].floor_ms == 1.0
    assert timed["a"].median_ms == 3.0  # what a median over the rounds would have said
    assert timed["a"].to_dict()["rounds"] == 14


def test_rounds_go_on_for_the_minimum_span() -> None:
    timed = floor_times({"a": lambda n: 1.0}, min_rounds=1, min_span_s=0.05, max_span_s=5.0)
    assert timed["a"].span_s >= 0.05 and len(timed["a"].round_ms) > 1


def test_split_half_measures_the_floor_reproducibility() -> None:
    assert abs(FloorTiming([1.0, 1.1, 1.0, 1.2]).split_half - 0.1) < 1e-9
    assert FloorTiming([1.0]).split_half == 0.0


def test_session_timer_times_a_real_session() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    sess = measuring_session(model.SerializeToString(), 1)
    timer = session_timer(sess, {"x": np.ones((1, 64), np.float32)})
    timed = floor_times({"relu": timer}, min_rounds=3, min_span_s=0.0)
    assert 0 < timed["relu"].floor_ms <= timed["relu"].median_ms
