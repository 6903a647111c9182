"""One conv (+ReLU) swept over channel counts in ONNX Runtime: which kernel runs each count, and its
time at each thread count, interleaved.

    .venv/bin/python tools/sweep_conv_channels.py --hw 14 --stride 2 --batch 32 --in 43,44,45,48 --out 39
    .venv/bin/python tools/sweep_conv_channels.py --hw 7 --batch 32 --in 61 --out 40-65 --threads 2,1

Why: the latency model's regimes say which convs run ONNX Runtime's blocked (NCHWc) kernel
(latency/blocking.py); this reads the kernel from the optimized graph ORT writes (a node in the
`com.microsoft.nchwc` domain: blocked) beside the time, so a rule can be checked against the runtime
itself. Each count is a separate session; every round times all of them in turn (`--rounds`, the
fastest round kept), so they are compared side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def counts(text: str) -> list[int]:
    """'40-65' or '43,44,48' (or a mix) -> the counts."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def conv_model(ci: int, co: int, hw: int, stride: int, kernel: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((co, ci, kernel, kernel)).astype(np.float32) * 0.05, "w")
    b = numpy_helper.from_array(np.zeros(co, np.float32), "b")
    pad = kernel // 2
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", ci, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def session(model: onnx.ModelProto, threads: int, optimized: Path | None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def kernel_of(path: Path) -> str:
    domains = {n.domain for n in onnx.load(str(path)).graph.node}
    return "blocked" if "com.microsoft.nchwc" in domains else "generic"


def fastest_ms(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    sess.run(None, {"x": x})
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {"x": x})
    return (time.perf_counter() - t0) / runs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="ins", required=True, help="input channel counts: 40-65 or 43,44,48")
    ap.add_argument("--out", dest="outs", required=True, help="output channel counts, likewise")
    ap.add_argument("--hw", type=int, default=14)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", default="2", help="thread counts to time, e.g. 2,1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    ort.set_default_logger_severity(3)  # not the warning that an optimized NCHWc graph is machine-specific
    pairs = [(ci, co) for ci in counts(args.ins) for co in counts(args.outs)]
    kernels: dict[tuple[int, int], str] = {}
    sessions: dict[tuple[int, int, int], ort.InferenceSession] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for ci, co in pairs:
            model = conv_model(ci, co, args.hw, args.stride, args.kernel)
            for t in threads:
                optimized = Path(tmp) / f"{ci}-{co}.onnx" if t == threads[0] else None
                sessions[(ci, co, t)] = session(model, t, optimized)
                if optimized is not None:
                    kernels[(ci, co)] = kernel_of(optimized)
    rng = np.random.default_rng(1)
    inputs = {ci: rng.standard_normal((args.batch, ci, args.hw, args.hw)).astype(np.float32) for ci in {ci for ci, _ in pairs}}
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(args.rounds):
        for key, sess in sessions.items():
            best[key] = min(best[key], fastest_ms(sess, inputs[key[0]], args.runs))
    print(f"conv {args.kernel}x{args.kernel} stride {args.stride} at {args.hw}x{args.hw}, batch {args.batch}, ONNX Runtime {ort.__version__}; "
          f"fastest of {args.rounds} interleaved rounds of {args.runs} runs\n")
    print("| in -> out | kernel | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}, ms" for t in threads) + " |")
    print("|---|---|" + "---:|" * len(threads))
    for ci, co in pairs:
        print(f"| {ci} -> {co} | {kernels[(ci, co)]} | " + " | ".join(f"{best[(ci, co, t)]:.3f}" for t in threads) + " |")


if __name__ == "__main__":
    main()
