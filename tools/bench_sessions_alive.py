"""A build's artifacts timed with every session kept alive, and with one session alive at a time.

    .venv/bin/python tools/bench_sessions_alive.py build/demo/build-cpu/artifacts/cpu --batch 32 [--rounds 16]

Why: the decide stage and the build's latency check used to time their candidates through one
backend each that kept every artifact's ONNX Runtime session alive, while the latency table
timed whole models one session at a time (as a service runs one). Idle sessions keep their
spinning worker threads, and on a 2-vCPU machine those take a core from the model being timed.
This script times each artifact of a build directory (every subdirectory with a metadata.json)
both ways, in alternating interleaved rounds (the decide stage's runs per round), and prints per
artifact the fastest and the median round's p50 each way and the median of the paired per-round
ratios (kept alive / one at a time). It also prints what creating a session costs, the price of
one session at a time.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.backends import Artifact, get  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_RUNS, WHOLE_MODEL_SECONDS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", type=Path, help="a build's artifacts/<target> directory")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--skip", nargs="*", default=["deploy"], help="artifact directories to leave out (deploy is a copy of another)")
    args = ap.parse_args()
    dirs = sorted(p for p in args.artifacts.iterdir() if (p / "metadata.json").is_file() and p.name not in args.skip)
    if not dirs:
        sys.exit(f"error: no artifact directories under {args.artifacts}; pass a build's artifacts/<target> directory")
    arts = {p.name: Artifact.load(p) for p in dirs}
    kept = get(next(iter(arts.values())).backend or "onnxruntime")
    times: dict[tuple[str, str], list[float]] = {(n, m): [] for n in arts for m in ("alive", "one")}
    created: list[float] = []
    for r in range(args.rounds):
        for mode in (("alive", "one") if r % 2 == 0 else ("one", "alive")):
            for name, art in arts.items():
                if mode == "alive":
                    backend = kept
                else:
                    backend = get(art.backend or "onnxruntime")
                    started = time.perf_counter()
                    backend.benchmark(art, batch=args.batch, warmup=0, runs=1)  # creates the session
                    created.append(time.perf_counter() - started)
                times[(name, mode)].append(backend.benchmark(art, batch=args.batch, warmup=2, runs=WHOLE_MODEL_RUNS, min_seconds=WHOLE_MODEL_SECONDS).p50_ms)
                if mode == "one":
                    backend.release_sessions()
                    del backend
                    gc.collect()
    print(f"{args.artifacts}, batch {args.batch}, {args.rounds} rounds alternating; p50 ms of the fastest / median round")
    print(f"{'artifact':18s} {'all alive':>17s} {'one at a time':>17s}  paired ratio (median)")
    for name in arts:
        a, o = times[(name, "alive")], times[(name, "one")]
        ratio = statistics.median(x / y for x, y in zip(a, o, strict=True))
        print(f"{name:18s} {min(a):8.3f} / {statistics.median(a):6.3f} {min(o):8.3f} / {statistics.median(o):6.3f}  {ratio:.3f}")
    print(f"creating a session and one cold run: median {statistics.median(created) * 1000:.0f} ms, max {max(created) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
