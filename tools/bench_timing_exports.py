"""Which graph a timing export stands for: the shipped dynamic-batch export against the same
exporter at a fixed batch and the TorchScript exporter at a fixed batch.

    .venv/bin/python tools/bench_timing_exports.py [--models shuffle_cnn,shufflenet_v2,demo,resnet18] [--precisions int8,fp32] [--rounds 7]

The latency table's context fit and the build's latency check time exports of whole plans; the
build ships a dynamic-batch export (`export_onnx(..., dynamic_batch=True)`). This script builds
each export as the backend deploys it (INT8 with random-input timing ranges: ranges change
scales, never the graph), compares the ONNX Runtime kernels each session runs with the shipped
graph's, and times them side by side (interleaved rounds, the fastest round's p50). Random
weights: only speed is measured. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from hadmc_deploy.backends import get
from hadmc_deploy.backends.ort_session import make_session, random_feeds, time_session
from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.export import export_onnx
from hadmc_deploy.latency.context_build import kernel_ops
from hadmc_deploy.latency.whole_model import TimingRanges, torchscript_export


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    from hadmc_deploy.models import zoo
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.resnet import resnet18

    torch.manual_seed(0)
    makers = {"shuffle_cnn": (zoo.ShuffleCNN, (1, 1, 28, 28)), "shufflenet_v2": (lambda: zoo.shufflenet_v2_x1_0(num_classes=10), (1, 3, 64, 64)),
              "demo": (demo_cnn, (1, 1, 28, 28)), "resnet18": (resnet18, (1, 3, 64, 64))}
    make, shape = makers[name]
    return make().eval(), shape


EXPORTS = ("shipped (dynamic batch)", "same exporter, fixed batch", "TorchScript, fixed batch")


def measure(name: str, precision: str, rounds: int) -> list[str]:
    model, shape = build_model(name)
    backend = get("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="hadmc-timing-exports-") as tmp:
        paths = [Path(tmp) / f"e{i}.onnx" for i in range(len(EXPORTS))]
        export_onnx(model, shape, paths[0], dynamic_batch=True)
        export_onnx(model, shape, paths[1], dynamic_batch=False)
        torchscript_export(model, shape, paths[2])
        ranges = TimingRanges(shape)
        arts = [ranges.build(backend, p, Path(tmp) / f"a{i}") if precision == "int8"
                else backend.build(BuildRequest(p, precision, Path(tmp) / f"a{i}", backend.default_target())) for i, p in enumerate(paths)]
        kernels = [kernel_ops(a, shape[0], None) for a in arts]
        sessions = [make_session(a.model_path) for a in arts]
        feeds = [random_feeds(s, batch=shape[0]) for s in sessions]
        round_p50 = [[] for _ in arts]
        for _ in range(rounds):
            for i, s in enumerate(sessions):
                round_p50[i].append(time_session(s, feeds[i], warmup=5, runs=30, batch=shape[0]).p50_ms)
    fastest = [min(r) for r in round_p50]
    rows = []
    for i, label in enumerate(EXPORTS):
        rows.append(f"| {name} {tuple(shape)} | {precision} | {label} | {len(kernels[i])} | {'yes' if kernels[i] == kernels[0] else 'no'} | "
                    f"{fastest[i]:.4f} | {statistics.median(round_p50[i]):.4f} | {fastest[i] / fastest[0]:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="shuffle_cnn,shufflenet_v2,demo,resnet18")
    ap.add_argument("--precisions", default="int8,fp32")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print("| model (shape) | precision | export | kernels | kernels as shipped | fastest round p50 ms | median round p50 ms | fastest / shipped |")
    print("|---|---|---|---:|---|---:|---:|---:|")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            for row in measure(name, precision, args.rounds):
                print(row, flush=True)


if __name__ == "__main__":
    main()
