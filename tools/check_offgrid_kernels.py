"""Whether a plan's TorchScript timing export runs the kernels of its deployed export, off the grid.

    .venv/bin/python tools/check_offgrid_kernels.py [--models demo,resnet18,mobilenet_v2,efficientnet_b0] [--precisions fp32,int8]

Why: the latency table's context fit checks TorchScript's graph against the deployed one on the full
plan only (`context_build.faster_exporter`) and then exports every other plan with TorchScript, the
off-grid ones included, whose convs leave ONNX Runtime's NCHWc path, where other fusions apply. This
builds each model's odd-width 75% and 45% plans (`context_plans.offgrid_plan`) both ways, as the
backend deploys them (INT8 with random-input timing ranges), and compares the kernels ONNX Runtime
runs. Random weights (seed 0); nothing is timed. Prints a markdown table. To see another checkout's
behaviour, put it first on the path: `PYTHONPATH=<checkout> .venv/bin/python tools/check_offgrid_kernels.py`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from hadmc_deploy.backends import get
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.context_build import build_deployed_artifact, kernel_ops
from hadmc_deploy.latency.context_plans import offgrid_plan


def build_model(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    from hadmc_deploy.models import zoo
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.mobilenet import mobilenet_v2
    from hadmc_deploy.models.resnet import resnet18

    torch.manual_seed(0)
    makers = {"demo": (demo_cnn, (1, 1, 28, 28)), "resnet18": (resnet18, (1, 3, 64, 64)), "mobilenet_v2": (mobilenet_v2, (1, 3, 64, 64)),
              "efficientnet_b0": (lambda: zoo.efficientnet_b0(num_classes=10), (1, 3, 64, 64))}
    make, shape = makers[name]
    return make().eval(), shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,resnet18,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--precisions", default="fp32,int8")
    args = ap.parse_args()
    backend = get("onnxruntime")
    print("| model (shape) | precision | plan | kernels, TorchScript export | kernels, deployed export | the same | first difference (TorchScript / deployed) |")
    print("|---|---|---|---:|---:|---|---|")
    for name in args.models.split(","):
        model, shape = build_model(name)
        graph = trace(model, shape)
        for precision in args.precisions.split(","):
            for frac in (0.75, 0.45):
                plan = offgrid_plan(graph, frac)
                with tempfile.TemporaryDirectory(prefix="hadmc-offgrid-kernels-") as tmp:
                    fast, deployed = (kernel_ops(build_deployed_artifact(model, graph, plan, shape, backend, precision, Path(tmp), ex, exporter=ex)[1], shape[0], None)
                                      for ex in ("fast", "deploy"))
                first = next(((i, a, b) for i, (a, b) in enumerate(zip(fast, deployed, strict=False)) if a != b), None)
                where = f"kernel {first[0]}: {first[1]} / {first[2]}" if first else ("-" if fast == deployed else "one is longer")
                print(f"| {name} {shape} | {precision} | offgrid{int(frac * 100)} | {len(fast)} | {len(deployed)} | {'yes' if fast == deployed else 'no'} | {where} |", flush=True)


if __name__ == "__main__":
    main()
