"""Whole deployed models timed with spinning and with blocking ONNX Runtime workers.

    .venv/bin/python tools/bench_spinning.py [--rounds 8] [--runs 15] [--out docs/spinning.md]

Why: per-layer tables are timed in sessions whose idle workers block
(`latency.repeat.measuring_session`): many sessions are alive at once there, and spinning
workers of one stole the cores of the next. A deployed model runs in a session that spins.
This script measures what blocking costs a whole model: each model is exported as a build
exports it, built FP32 and INT8 by the ONNX Runtime backend (random-input ranges: speed
only), and timed in fresh sessions, one alive at a time, spinning and blocking alternately
over interleaved rounds. It prints the fastest round's p50 per cell and their ratio: the
bias a context fit timed with blocking workers would put into a latency table.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.backends import get  # noqa: E402
from hadmc_deploy.backends.ort_session import random_feeds, time_session  # noqa: E402
from hadmc_deploy.backends.request import BuildRequest  # noqa: E402
from hadmc_deploy.latency.repeat import measuring_session  # noqa: E402
from hadmc_deploy.latency.whole_model import _timing_ranges, export_for_timing  # noqa: E402

#: (label, model builder, input shape): the demo CNN at two batches and at 96x96 (issue 13's
#: unaligned-plan check), and a ResNet-18.
CASES = (
    ("demo CNN", "demo_cnn", (1, 1, 28, 28)),
    ("demo CNN", "demo_cnn", (32, 1, 28, 28)),
    ("demo CNN", "demo_cnn", (1, 1, 96, 96)),
    ("ResNet-18", "resnet18", (1, 3, 224, 224)),
)


def build_model(name: str, channels: int):  # noqa: ANN201 - a torch module
    """Random-initialised: only speed is measured."""
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.resnet import resnet18

    return {"resnet18": resnet18, "demo_cnn": demo_cnn}[name](in_channels=channels).eval()


def time_once(path: Path, batch: int, spinning: bool, runs: int) -> float:
    """Median of `runs` runs in a fresh session (the only one alive), after 3 warm-up runs."""
    session = measuring_session(path, None, allow_spinning=spinning)
    p50 = time_session(session, random_feeds(session, batch=batch), warmup=3, runs=runs, batch=batch).p50_ms
    del session
    gc.collect()
    return p50


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    backend = get("onnxruntime")
    lines = ["| model | input | precision | spinning ms | blocking ms | blocking / spinning |", "|---|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(prefix="hadmc-spin-") as tmp:
        for label, name, shape in CASES:
            src = export_for_timing(build_model(name, shape[1]), shape, Path(tmp) / f"{name}-{shape[0]}.onnx")
            for precision in ("fp32", "int8"):
                ranges = _timing_ranges(src, shape) if precision == "int8" else None
                art = backend.build(BuildRequest(onnx_path=src, precision=precision, out_dir=Path(tmp) / f"{name}-{shape[0]}-{precision}", target=backend.default_target(), ranges=ranges))
                times: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(args.rounds):
                    for spinning in (True, False):
                        times[spinning].append(time_once(Path(art.model_path), shape[0], spinning, args.runs))
                spin, block = min(times[True]), min(times[False])
                row = f"| {label} | {'x'.join(map(str, shape))} | {precision} | {spin:.3f} | {block:.3f} | {block / spin:.2f}x |"
                print(row, flush=True)
                lines.append(row)
    header = [
        "# Spinning and blocking ONNX Runtime workers, whole deployed models",
        "",
        f"`python tools/bench_spinning.py --rounds {args.rounds} --runs {args.runs}`: fastest round's p50 of {args.rounds} interleaved rounds "
        f"of {args.runs} runs, one fresh session alive at a time, 2 intra-op threads. The machine is shared: compare the ratio column.",
        "",
    ]
    if args.out:
        Path(args.out).write_text("\n".join(header + lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
