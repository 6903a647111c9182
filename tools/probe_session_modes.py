"""Speed of N ONNX Runtime sessions of one model file: all alive at once, then created and freed in turn.

    .venv/bin/python tools/probe_session_modes.py MODEL.onnx [--sessions 8] [--batch 1]

Why: whole-model times of the same file differ by 20-30% between sessions of one process on these
machines, and the difference lasts as long as the session (a placement of its buffers, it seems:
sessions created and freed one after another reuse the same memory and run alike, while sessions
alive together each draw their own). This prints each session's fastest median over 5 rounds
(2 intra-op threads, standard-normal input), both ways.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def make_session(path: Path, batch: int) -> tuple[Any, dict[str, np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *first.shape[1:]]).astype(np.float32)
    return session, {first.name: x}


def median_ms(session: Any, feeds: dict[str, np.ndarray], seconds: float = 0.05) -> float:
    for _ in range(5):
        session.run(None, feeds)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 20 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    alive = [make_session(args.model, args.batch) for _ in range(args.sessions)]
    best = [float("inf")] * len(alive)
    for _ in range(5):
        for i, (session, feeds) in enumerate(alive):
            best[i] = min(best[i], median_ms(session, feeds))
    print("alive together:", " ".join(f"{b:.3f}" for b in best))
    del alive
    gc.collect()
    one_at_a_time = []
    for _ in range(args.sessions):
        session, feeds = make_session(args.model, args.batch)
        one_at_a_time.append(min(median_ms(session, feeds) for _ in range(5)))
        del session
        gc.collect()
    print("one at a time: ", " ".join(f"{b:.3f}" for b in one_at_a_time))


if __name__ == "__main__":
    main()
