"""Which ONNX Runtime graph optimizers a partly-float INT8 artifact runs faster without, measured.

An INT8 graph with layers kept in float (the accuracy guard's repairs, the mixed
variant) has float->INT8 boundaries. ORT's QDQPropagationTransformer moves the
QuantizeLinear after a float MaxPool above it, so the pool runs on uint8 in NCHW,
a slow generic kernel: ResNet-18 at 224 with only its stem conv in float ran 1.7-1.8x
slower with the transformer than without it (the pool then stays in float);
all-INT8 graphs, and MobileNetV2 (no MaxPool) either way, ran the same within the
run's noise (`tools/bench_qdq_propagation.py`, docs/qdq_propagation.md).

Which way is faster depends on the graph and the CPU, so the backend times both
side by side when the graph has float layers beside quantized ones and records
the winner in the artifact's session options (`disabled_optimizers`), which every
session opened on the artifact applies (the backend's, `example.py`'s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

#: the ORT transformer whose Q/DQ moves make float/INT8 boundaries slow (see the module docstring).
QDQ_PROPAGATION = "QDQPropagationTransformer"
#: disabling must win by more than this (relative, fastest round against fastest round).
MIN_GAIN = 0.05
ROUNDS = 5
RUNS = 10
#: timed milliseconds per session and round at most (never fewer than 3 runs).
TIME_PER_ROUND_MS = 200.0


def has_float_and_int8_layers(model: onnx.ModelProto) -> bool:
    """A QDQ graph with at least one Conv/Gemm/MatMul whose weight is a plain float initializer."""
    inits = {i.name for i in model.graph.initializer}
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = float_weighted = False
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in dq_outputs:
            quantized = True
        elif weight in inits:
            float_weighted = True
    return quantized and float_weighted


def choose_disabled_optimizers(model_path: Path, threads: int, opt_level: str) -> tuple[list[str], dict[str, Any] | None]:
    """([] or [QDQ_PROPAGATION], the measurement or None when nothing was measured)."""
    from .ort_session import make_session, random_feeds, time_session

    model = onnx.load(str(model_path), load_external_data=False)
    if not has_float_and_int8_layers(model):
        return [], None
    candidates: dict[str, Any] = {
        "default": make_session(model_path, threads, opt_level),
        "without_qdq_propagation": make_session(model_path, threads, opt_level, disabled_optimizers=(QDQ_PROPAGATION,)),
    }
    feeds = {name: random_feeds(sess, batch=1) for name, sess in candidates.items()}
    # a large model (a detector at 640) gets fewer runs: a few seconds at most, whatever its size
    one_ms = time_session(candidates["default"], feeds["default"], 1, 1, 1).p50_ms
    runs = max(3, min(RUNS, int(TIME_PER_ROUND_MS / max(one_ms, 1e-3))))
    n_rounds = ROUNDS if one_ms < TIME_PER_ROUND_MS / RUNS else 3
    rounds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(n_rounds):  # interleaved: load from other processes hits both alike
        for name, sess in candidates.items():
            rounds[name].append(time_session(sess, feeds[name], 2, runs, 1).p50_ms)
    default_ms, without_ms = min(rounds["default"]), min(rounds["without_qdq_propagation"])
    disable = without_ms < default_ms * (1.0 - MIN_GAIN)
    measured = {"batch": 1, "default_ms": default_ms, "without_qdq_propagation_ms": without_ms, "rounds": n_rounds, "runs": runs,
                "chosen": "without_qdq_propagation" if disable else "default"}
    return ([QDQ_PROPAGATION] if disable else []), measured


def artifact_disabled_optimizers(metadata: dict[str, Any]) -> list[str]:
    """The optimizers an artifact's sessions run without (none for artifacts built before this existed)."""
    options = metadata.get("session_options")
    return list((options or {}).get("disabled_optimizers") or []) if isinstance(options, dict) else []
