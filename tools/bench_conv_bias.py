"""What the export's zero bias on a bias-less Conv feeding an Add buys in ONNX Runtime: the shipped
graph against the same graph with those biases taken out, kernels and time side by side.

    .venv/bin/python tools/bench_conv_bias.py [--models demo96_offgrid,resnet18_offgrid,preact,preact_offgrid] [--precisions fp32,int8] [--rounds 9]

Why: ONNX Runtime fuses Conv + Add (+ activation) into one FusedConv only when the Conv has a bias,
off its NCHWc path (channel counts off the blocked width, or a CPU without it), and the dynamo
exporter drops an all-zero bias (`onnx_passes.bias_for_add_fusion`). Two kinds of model meet it: a
random-weight model whose BatchNorm folds to a zero bias (every speed-only model of this repository)
and a pre-activation residual network, whose convs have no bias and feed the Add directly, trained or
not. Each graph is built as the backend deploys it (INT8 with random-input timing ranges: ranges change
scales, never the graph) and timed in interleaved rounds (each round's p50; the fastest round, and
the median of the per-round ratios). Random weights: only speed is measured. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from hadmc_deploy.backends import get
from hadmc_deploy.backends.ort_session import make_session, random_feeds, time_session
from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.export import export_onnx
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.context_build import kernel_ops
from hadmc_deploy.latency.context_plans import offgrid_plan
from hadmc_deploy.latency.whole_model import TimingRanges, pruned_module


class PreActBlock(nn.Module):
    """BN-ReLU-Conv twice, the residual added straight after the second (bias-less) conv."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        return self.conv2(torch.relu(self.bn2(self.conv1(out)))) + shortcut


class PreActNet(nn.Module):
    """A small pre-activation ResNet (CIFAR-style stages of 64/128/256 channels at 96x96)."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [PreActBlock(cin, w, 1 if i == 0 else 2), PreActBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.fc = nn.BatchNorm2d(cin), nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model of `name` (random weights, seed 0), pruned to its odd-width 75% plan for *_offgrid."""
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.resnet import resnet18

    torch.manual_seed(0)
    makers = {"demo96": (demo_cnn, (1, 1, 96, 96)), "resnet18": (resnet18, (1, 3, 224, 224)), "preact": (PreActNet, (1, 3, 96, 96))}
    base = name.removesuffix("_offgrid")
    make, shape = makers[base]
    model = make().eval()
    if name.endswith("_offgrid"):
        graph = trace(model, shape)
        model = pruned_module(model, graph, offgrid_plan(graph, 0.75)).eval()
    return model, shape


def without_zero_biases(path: Path, out: Path) -> int:
    """`path`'s graph with the export's zero biases taken out (what the exporter alone gives); returns how many."""
    model = onnx.load(str(path))
    removed = 0
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[2].endswith("_zero_bias"):
            del node.input[2]
            removed += 1
    keep = [init for init in model.graph.initializer if not init.name.endswith("_zero_bias")]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save(model, str(out))
    return removed


def measure(name: str, precision: str, rounds: int) -> str:
    model, shape = build_model(name)
    backend = get("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="hadmc-conv-bias-") as tmp:
        shipped = Path(tmp) / "shipped.onnx"
        export_onnx(model, shape, shipped, dynamic_batch=True)
        plain = Path(tmp) / "plain.onnx"
        biases = without_zero_biases(shipped, plain)
        ranges = TimingRanges(shape)
        arts = [ranges.build(backend, p, Path(tmp) / f"a{i}") if precision == "int8"
                else backend.build(BuildRequest(p, precision, Path(tmp) / f"a{i}", backend.default_target())) for i, p in enumerate((shipped, plain))]
        kernels = [kernel_ops(a, shape[0], None) for a in arts]
        sessions = [make_session(a.model_path) for a in arts]
        feeds = [random_feeds(s, batch=shape[0]) for s in sessions]
        round_p50: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, s in enumerate(sessions):
                round_p50[i].append(time_session(s, feeds[i], warmup=5, runs=30, batch=shape[0]).p50_ms)
    ratios = [a / b for a, b in zip(*round_p50, strict=True)]
    return (f"| {name} {tuple(shape)} | {precision} | {biases} | {len(kernels[1])} -> {len(kernels[0])} | {min(round_p50[1]):.4f} | {min(round_p50[0]):.4f} | "
            f"{min(round_p50[0]) / min(round_p50[1]):.3f} | {statistics.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo96_offgrid,resnet18_offgrid,preact,preact_offgrid")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    print("| model (shape) | precision | zero biases | kernels without -> with | fastest round p50 ms without | with | with / without (fastest rounds) | per-round ratio, median (range) |")
    print("|---|---|---:|---|---:|---:|---:|---|")
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            print(measure(name, precision, args.rounds), flush=True)


if __name__ == "__main__":
    main()
