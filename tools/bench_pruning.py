"""Benchmark: knapsack vs greedy vs uniform width search, equal recovery budget, measured in ONNX Runtime.

    .venv/bin/python tools/bench_pruning.py            # writes docs/pruning.md (+ build/bench_pruning/results.json)

A CIFAR-style ResNet-20 (1x28x28, width 16) is trained here on a Fashion-MNIST
subset (cached in build/bench_pruning/), a latency table for it is measured on
this CPU with `hadmc-deploy lut` (cached), then for each predicted-speedup
target and each search method: search -> surgery -> the same recovery
(distillation, same data, epochs, lr, seed) -> accuracy on the test subset ->
ONNX export. All models are then timed in ONNX Runtime side by side
(interleaved rounds) at batch 1 and batch 32, so load from other processes hits
every model alike. The machine is a shared 2-core box: training and recovery
budgets are deliberately small and the doc says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.data import Preprocess, load_data  # noqa: E402
from hadmc_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic  # noqa: E402
from hadmc_deploy.models.resnet import cifar_resnet  # noqa: E402
from hadmc_deploy.train import train_classifier  # noqa: E402
from hadmc_deploy.ui import UI  # noqa: E402

ARCH = "hadmc_deploy.models.resnet:cifar_resnet"
METHODS = ("knapsack", "greedy", "uniform")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "build" / "bench_pruning"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "pruning.md"))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--speedups", default="1.5,2,3")
    p.add_argument("--base-train", type=int, default=6000, help="training samples for the base model")
    p.add_argument("--base-epochs", type=int, default=2)
    p.add_argument("--recover-train", type=int, default=6000, help="training samples for each recovery")
    p.add_argument("--recover-epochs", type=int, default=2)
    p.add_argument("--recover-lr", type=float, default=0.02)
    p.add_argument("--test", type=int, default=10000, help="test samples for accuracy")
    p.add_argument("--rounds", type=int, default=5, help="interleaved ONNX Runtime timing rounds")
    p.add_argument("--min-keep-ratio", type=float, default=0.25)
    return p.parse_args()


def base_model(args: argparse.Namespace, work: Path, ui: UI) -> tuple[torch.nn.Module, dict]:
    """Train (or reuse) the base ResNet-20; keyed by everything that changes it."""
    kwargs = {"depth": 20, "num_classes": 10, "in_channels": 1, "width": args.width}
    key = {"kwargs": kwargs, "train": args.base_train, "epochs": args.base_epochs, "torch": torch.__version__}
    ckpt, record_path = work / "base.pth", work / "base.json"
    model = cifar_resnet(**kwargs)
    if ckpt.is_file() and record_path.is_file() and json.loads(record_path.read_text()).get("key") == key:
        model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
        ui.log(f"using the cached base model {ckpt}")
        return model.eval(), json.loads(record_path.read_text())
    train = load_data("builtin:fashion-mnist:train", Preprocess(), limit=args.base_train, seed=0)
    torch.manual_seed(0)
    start = time.perf_counter()
    train_classifier(model, train, epochs=args.base_epochs, lr=0.05, batch_size=128, seed=0, ui=ui)
    with atomic_path(ckpt) as tmp:
        torch.save({"arch": ARCH, "arch_kwargs": kwargs, "state_dict": model.state_dict(), "input_shape": [1, 1, 28, 28]}, tmp)
    record = {"key": key, "train_seconds": time.perf_counter() - start}
    write_json_atomic(record_path, record)
    return model.eval(), record


def latency_table(args: argparse.Namespace, work: Path, ui: UI) -> Path:
    """Measure (or resume) the fp32 batch-1 table for this architecture on this CPU."""
    lut = work / "lut_fp32_b1.json"
    kwargs = json.dumps({"depth": 20, "num_classes": 10, "in_channels": 1, "width": args.width})
    cmd = [sys.executable, "-m", "hadmc_deploy", "lut", "--arch", ARCH, "--arch-kwargs", kwargs, "--input-shape", "1,1,28,28",
           "--target", "cpu", "--precision", "fp32", "-o", str(lut), "-q"]
    ui.log("measuring/resuming the latency table: " + " ".join(cmd[2:]))
    subprocess.run(cmd, check=True)
    return lut


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # training shares 2 cores with other jobs; ORT sessions keep their own threads
    ui = UI()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.importance import score_groups
    from hadmc_deploy.latency import load_latency_model
    from hadmc_deploy.latency.whole_model import export_for_timing, time_onnx_interleaved
    from hadmc_deploy.recover import RecoveryOptions, accuracy, recover
    from hadmc_deploy.search import search
    from hadmc_deploy.surgery import apply
    from hadmc_deploy.targets import get_target

    model, base_record = base_model(args, work, ui)
    lut = latency_table(args, work, ui)
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    scores = score_groups(model, graph, "l1")
    latency = load_latency_model(get_target("cpu"), lut, ui=ui)
    rec_train = load_data("builtin:fashion-mnist:train", Preprocess(), limit=args.recover_train, seed=1)
    test = load_data("builtin:fashion-mnist:test", Preprocess(), limit=args.test, seed=0)
    base_acc = accuracy(model, test)
    results_path = work / "results.json"
    cache = json.loads(results_path.read_text()) if results_path.is_file() else {}
    config_key = json.dumps({k: v for k, v in vars(args).items() if k not in ("rounds", "doc", "work")}, sort_keys=True)
    if cache.get("config") != config_key:
        cache = {"config": config_key, "runs": {}}
    models = {"original": model}
    rows = []
    for speedup in [float(s) for s in args.speedups.split(",")]:
        for method in METHODS:
            name = f"{method}-{speedup:g}x"
            result = search(graph, scores, latency, method=method, speedup=speedup, round_to=8, min_keep_ratio=args.min_keep_ratio)
            pruned, _ = apply(model, graph, result.plan, scores=scores)
            run = cache["runs"].get(name)
            if run is None or run.get("keep") != result.plan.keep:
                opts = RecoveryOptions(epochs=args.recover_epochs, lr=args.recover_lr, batch_size=64, seed=0)
                start = time.perf_counter()
                rec = recover(pruned, model, rec_train, test, opts, ui)
                run = {
                    "keep": result.plan.keep, "predicted_speedup": result.predicted_speedup, "predicted_ms": result.predicted_ms,
                    "importance_kept": result.importance_kept, "acc_pruned": rec.accuracy_before, "acc_bn": rec.accuracy_after_bn,
                    "acc_recovered": rec.accuracy_after, "recover_seconds": time.perf_counter() - start,
                    "params": sum(p.numel() for p in rec.model.parameters()),
                }
                torch.save(rec.model.state_dict(), work / f"{name}.pt")
                cache["runs"][name] = run
                write_json_atomic(results_path, cache)
            else:
                pruned.load_state_dict(torch.load(work / f"{name}.pt", weights_only=True))
            models[name] = pruned.eval()
            rows.append((name, method, speedup, run))
    from hadmc_deploy.backends import get

    backend = get("onnxruntime")
    timings = {}
    for batch in (1, 32):
        # the fast (TorchScript) exporter writes a fixed batch: one file per batch size
        (work / f"b{batch}").mkdir(exist_ok=True)
        paths = [export_for_timing(m, (batch, *shape[1:]), work / f"b{batch}" / f"{name}.onnx", exporter="fast") for name, m in models.items()]
        timed = time_onnx_interleaved(paths, backend, batch=batch, rounds=args.rounds, warmup=5, runs=20 if batch == 1 else 10, ui=ui)
        timings[batch] = {name: t[0] for name, t in zip(models, timed, strict=True)}
    cache["timings"] = {str(b): t for b, t in timings.items()}
    cache["base_accuracy"] = base_acc
    write_json_atomic(results_path, cache)
    write_doc(args, Path(args.doc), rows, timings, base_acc, base_record, latency, backend)


def write_doc(args, doc: Path, rows, timings, base_acc, base_record, latency, backend) -> None:  # noqa: ANN001
    device = backend.describe_device()
    lines = [
        "# Latency-guided pruning: knapsack vs greedy vs uniform",
        "",
        "Generated by `.venv/bin/python tools/bench_pruning.py` (numbers below come from that run; rerun to refresh).",
        "",
        f"Model: CIFAR-style ResNet-20 (width {args.width}, 1x28x28), trained here on {args.base_train} Fashion-MNIST images for "
        f"{args.base_epochs} epochs ({base_record.get('train_seconds', 0):.0f} s). Test accuracy of the base model on {args.test} test images: "
        f"**{base_acc:.2f}%**. Importance: L1; channels rounded to 8 (the CPU target's alignment); floor {args.min_keep_ratio:.0%} of each group.",
        "",
        f"Search budget: predicted speedup at batch 1 from the latency table measured on this CPU ({latency.describe().get('source', 'lut') if hasattr(latency, 'describe') else 'lut'}). "
        f"Equal recovery budget for every method: distillation (logit KD T=4, alpha=0.7, feature alignment on the last 3 stages) for "
        f"{args.recover_epochs} epoch(s) over {args.recover_train} training images, lr {args.recover_lr}, batch 64, seed 0, after BN recalibration. "
        "This is a small budget chosen for a shared 2-core machine, so absolute accuracies are below what a full fine-tune reaches.",
        "",
        f"Latency: ONNX Runtime {device.get('onnxruntime', '')} CPU EP on {device.get('name', platform.processor())} ({device.get('isa', '')}, "
        f"{device.get('threads', '?')} session threads), all models timed in {args.rounds} "
        "interleaved rounds (median of per-round p50s), fp32, at batch 1 and batch 32. The machine is shared: compare the ratios within one run.",
        "",
        "| target | method | predicted speedup (b1) | measured speedup b1 | measured speedup b32 | latency b1 (ms) | latency b32 (ms) | params | acc. after pruning+BN | acc. after recovery | change vs base |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    t1, t32 = timings[1], timings[32]
    lines.append(f"| - | original | 1.00x | 1.00x | 1.00x | {t1['original']:.3f} | {t32['original']:.3f} | - | {base_acc:.2f}% | {base_acc:.2f}% | - |")
    for name, method, speedup, run in rows:
        lines.append(
            f"| {speedup:g}x | {method} | {run['predicted_speedup']:.2f}x | {t1['original'] / t1[name]:.2f}x | {t32['original'] / t32[name]:.2f}x | "
            f"{t1[name]:.3f} | {t32[name]:.3f} | {run['params']:,} | {run['acc_bn']:.2f}% | {run['acc_recovered']:.2f}% | {run['acc_recovered'] - base_acc:+.2f} |"
        )
    by = {(m, sp): run for _, m, sp, run in rows}
    se = 100 * (0.75 * 0.25 / max(args.test, 1)) ** 0.5
    lines += [
        "",
        f"Reading the table: one accuracy on {args.test} test images has a binomial standard error of about ±{se:.2f} points "
        f"(at 75%), so differences below ~{2 * se:.1f} points are within noise. "
        "The uniform plan can only take a few keep ratios here (8-channel alignment on 16/32/64-wide groups), and on this CPU "
        "24-channel convs run slower than 32-channel ones (an ONNX Runtime kernel staircase the table captured), so uniform may "
        "overshoot a target; compare rows at similar *measured* latency.",
    ]
    for sp in sorted({sp for _, _, sp, _ in rows}):
        if ("knapsack", sp) in by and ("uniform", sp) in by:
            k, u = by[("knapsack", sp)], by[("uniform", sp)]
            lines.append(
                f"- {sp:g}x: knapsack {k['acc_recovered']:.2f}% at {t1['original'] / t1[f'knapsack-{sp:g}x']:.2f}x measured vs uniform "
                f"{u['acc_recovered']:.2f}% at {t1['original'] / t1[f'uniform-{sp:g}x']:.2f}x (difference {k['acc_recovered'] - u['acc_recovered']:+.2f} points)."
            )
    lines += [
        "",
        "Methods (see `hadmc_deploy/search/`): **knapsack** = exact multiple-choice knapsack over 8-channel bundles "
        "(Pareto-frontier dynamic program, real-valued and negative bundle costs allowed), iterated because latency is not "
        "separable per group (linearise around the current plan, solve, repair with the full predictor until the budget holds, "
        "fill the slack); **greedy** = NetAdapt-style: repeatedly shrink the group losing the least importance per predicted ms saved; "
        "**uniform** = one keep ratio for every group, the largest whose predicted latency meets the budget.",
        "",
        "Kept widths per group:",
        "",
    ]
    for name, _, _, run in rows:
        lines.append(f"- {name}: " + ", ".join(f"{g}={k}" for g, k in run["keep"].items()))
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(doc, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
