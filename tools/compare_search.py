"""Compare the width searches (knapsack, greedy, uniform, amc, ppo) on the Fashion-MNIST ResNet-20.

For each target speedup (predicted by the CPU target's latency model) and each
method: the plan's accuracy on the test subset right after pruning (BN
recalibrated, no training) and after an equal, small recovery budget
(distillation from the unpruned model), its ONNX Runtime latency measured on
this machine (all plans timed interleaved in one run, batch 32), and the search's
wall time, over several seeds (the seed drives the RL agents and the recovery).
Writes docs/search_comparison.md and .json.

    .venv/bin/python tools/compare_search.py                 # the default size (see the doc for timings)
    .venv/bin/python tools/compare_search.py --seeds 0 --episodes 20 --recover-steps 10   # a smoke run

The trained model and the latency table are cached under .cache/compare_search/.
Everything runs on one torch thread (the machine is shared); ONNX Runtime sessions
use their deployment default thread count.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hadmc_deploy.data import ArrayDataset, load_data
from hadmc_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.importance import score_groups
from hadmc_deploy.latency import load_latency_model
from hadmc_deploy.latency.measure import get_backend
from hadmc_deploy.latency.whole_model import time_plans
from hadmc_deploy.models.resnet import cifar_resnet
from hadmc_deploy.recover import RecoveryOptions, recalibrate_bn, recover
from hadmc_deploy.search import build_problem, search
from hadmc_deploy.search.rl import rl_search
from hadmc_deploy.surgery import apply as surgery_apply
from hadmc_deploy.targets import get_target
from hadmc_deploy.train import evaluate_accuracy, train_classifier
from hadmc_deploy.ui import UI

ARCH = "hadmc_deploy.models.resnet:cifar_resnet"
ARCH_KWARGS = {"depth": 20, "num_classes": 10, "in_channels": 1}
#: latency is traced, predicted and measured at batch 32 (a throughput deployment): at batch 1 this
#: small network is dominated by per-kernel overheads and 3x is out of reach of any width plan.
SHAPE = (32, 1, 28, 28)
METHODS = ("knapsack", "greedy", "uniform", "amc", "ppo")
RL = ("amc", "ppo")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--episodes", type=int, default=40, help="RL episodes per search (default 40)")
    p.add_argument("--train-samples", type=int, default=15000, help="training samples for the base model (default 15000)")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--val-samples", type=int, default=400, help="held-out training samples scoring RL candidates (default 400)")
    p.add_argument("--test-samples", type=int, default=1000, help="test samples for the reported accuracy (default 1000)")
    p.add_argument("--recover-steps", type=int, default=20, help="optimizer steps of recovery per plan and seed, batch 64 (default 20)")
    p.add_argument("--lut", type=Path, default=Path(".cache/compare_search/lut_cpu_fp32_b32.json"))
    p.add_argument("--lut-minutes", type=float, default=5.0, help="time cap when the table has to be measured")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/compare_search"))
    p.add_argument("--out", type=Path, default=Path("docs/search_comparison.md"))
    p.add_argument("--json-only", action="store_true", help="write only OUT.json (for --merge: one process per seed)")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="render OUT from the runs of several --json-only results")
    return p.parse_args(argv)


def reachable(graph, scores, lat, speedup: float, round_to: int, ui: UI) -> float:  # noqa: ANN001
    """`speedup`, or just under the best the width floors reach by the latency model (said in the doc)."""
    problem, _ = build_problem(graph, scores, lat, speedup=speedup, round_to=round_to)
    floor_ms = problem.evaluator.total({**problem.full, **problem.floors()})
    best = problem.baseline_ms / floor_ms
    if best >= speedup:
        return speedup
    clamped = math.floor(best * 0.98 * 20) / 20
    ui.warn(f"{speedup:g}x is out of reach of the width floors (best {best:.2f}x by the latency model): using {clamped:g}x")
    return clamped


def base_model(train: ArrayDataset, args: argparse.Namespace, ui: UI) -> tuple[torch.nn.Module, Path]:
    """The ResNet-20 trained here on Fashion-MNIST; cached by (data, epochs)."""
    key = hashlib.sha256(json.dumps([ARCH, ARCH_KWARGS, train.sha256(), args.train_epochs]).encode()).hexdigest()[:12]
    path = args.cache_dir / f"resnet20_fmnist_{key}.pth"
    model = cifar_resnet(**ARCH_KWARGS)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        ui.log(f"using the cached model {path}")
    else:
        train_classifier(model, train, epochs=args.train_epochs, lr=0.1, seed=0, ui=ui)
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    return model.eval(), path


def latency_model(ckpt: Path, args: argparse.Namespace, ui: UI) -> Any:
    target = get_target("cpu")
    if not args.lut.exists():
        from hadmc_deploy.cli import main as cli_main

        ui.log(f"measuring the CPU latency table {args.lut} (at most {args.lut_minutes:g} min)")
        argv = ["lut", str(ckpt), "--arch", ARCH, "--arch-kwargs", json.dumps(ARCH_KWARGS), "--input-shape", ",".join(map(str, SHAPE)),
                "--target", "cpu", "--precision", "fp32", "-o", str(args.lut), "--budget-minutes", str(args.lut_minutes), "--warmup", "3", "--runs", "10", "-q"]
        code = cli_main(argv)
        if code not in (0, None):
            sys.exit(f"measuring the latency table failed (exit {code})")
    return load_latency_model(target, args.lut, ui=ui), target


def accuracy_after_pruning(model, graph, scores, plan, calib: ArrayDataset, test: ArrayDataset) -> tuple[torch.nn.Module, float]:  # noqa: ANN001
    pruned, _ = surgery_apply(copy.deepcopy(model), graph, plan, scores=scores, inplace=True)
    recalibrate_bn(pruned, calib, batches=4, batch_size=64)
    return pruned, evaluate_accuracy(pruned, test)


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    ui = UI()
    if args.merge:
        return merge(args, argv, ui)
    started = time.perf_counter()
    full_train = load_data("builtin:fashion-mnist:train")
    order = np.random.default_rng(0).permutation(len(full_train))
    take = lambda idx, name: ArrayDataset(full_train.x[np.sort(idx)], full_train.y[np.sort(idx)], name, full_train.preprocess)  # noqa: E731
    train = take(order[: args.train_samples], f"fashion-mnist:train[{args.train_samples}]")
    val = take(order[-args.val_samples :], f"fashion-mnist:train[held-out {args.val_samples}]")
    test = load_data("builtin:fashion-mnist:test", limit=args.test_samples)
    model, ckpt = base_model(train, args, ui)
    base_acc = evaluate_accuracy(model, test)
    ui.log(f"base model: test accuracy {base_acc:.2f}% on {len(test)} samples")
    lat, target = latency_model(ckpt, args, ui)
    round_to = target.alignment("fp32")
    graph = trace(model, SHAPE)
    scores = score_groups(model, graph, "l1")

    runs: list[dict[str, Any]] = []
    plans: dict[str, dict[str, int]] = {"baseline": graph.full_widths()}
    for requested in args.speedups:
        speedup = reachable(graph, scores, lat, requested, round_to, ui)
        fixed: dict[str, Any] = {}
        for method in args.methods:
            for seed in args.seeds:
                t0 = time.perf_counter()
                if method in RL:
                    result = rl_search(graph, scores, lat, method=method, speedup=speedup, round_to=round_to, model=model, val_data=val,
                                       calib_data=train, val_samples=args.val_samples, recal_batches=4, episodes=args.episodes, seed=seed, ui=ui)
                    search_s = time.perf_counter() - t0
                elif method in fixed:  # deterministic: one search, recovery repeated per seed
                    result, search_s = fixed[method]
                else:
                    result = search(graph, scores, lat, method=method, speedup=speedup, round_to=round_to, ui=ui)
                    search_s = time.perf_counter() - t0
                    fixed[method] = (result, search_s)
                plan_name = f"{method}-{speedup:g}x-" + hashlib.sha256(json.dumps(sorted(result.plan.keep.items())).encode()).hexdigest()[:8]
                plans[plan_name] = {**graph.full_widths(), **result.plan.keep}
                pruned, acc_pruned = accuracy_after_pruning(model, graph, scores, result.plan, train, test)
                rec = recover(pruned, model, train, val, RecoveryOptions(epochs=1, max_steps_per_epoch=args.recover_steps, batch_size=64, seed=seed, lr=0.01, bn_recalib_batches=4, device="cpu"), ui=ui)
                acc_rec = evaluate_accuracy(rec.model, test)
                runs.append({"speedup": speedup, "requested_speedup": requested, "method": result.method if method not in RL else method, "requested": method, "seed": seed,
                             "plan": plan_name, "keep": result.plan.keep, "predicted_ms": result.predicted_ms, "baseline_pred_ms": result.baseline_ms,
                             "search_s": search_s, "acc_pruned": acc_pruned, "acc_recovered": acc_rec, "notes": result.notes,
                             "reward": result.plan.meta.get("rl", {}).get("best_reward")})
                ui.log(f"{speedup:g}x {method} seed {seed}: predicted {result.baseline_ms / result.predicted_ms:.2f}x, "
                       f"acc {acc_pruned:.2f}% -> {acc_rec:.2f}% after recovery, search {search_s:.1f} s")
    ui.log(f"timing {len(plans)} distinct plans in ONNX Runtime (interleaved)")
    timed = time_plans(model, graph, plans, SHAPE, get_backend("onnxruntime"), workdir=args.cache_dir / "onnx", exporter="fast", rounds=7, ui=ui)
    measured = {t.name: t.median_ms for t in timed}
    for r in runs:
        r["measured_ms"] = measured[r["plan"]]
        r["measured_speedup"] = measured["baseline"] / measured[r["plan"]]
    record = {
        "command": "python tools/compare_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "base_accuracy": base_acc, "baseline_measured_ms": measured["baseline"], "latency_source": lat.describe() if hasattr(lat, "describe") else str(lat),
        "torch_threads": 1, "wall_s": time.perf_counter() - started, "runs": runs,
    }
    write_json_atomic(args.out.with_suffix(".json"), record)
    if not args.json_only:
        write_text_atomic(args.out, render(record, args))
    ui.log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {record['wall_s'] / 60:.1f} min")
    return 0


def merge(args: argparse.Namespace, argv: list[str] | None, ui: UI) -> int:
    """One document from several partial runs (e.g. one process per seed, run side by side)."""
    records = [json.loads(Path(p).read_text()) for p in args.merge]
    merged = dict(records[0])
    merged["runs"] = [r for rec in records for r in rec["runs"]]
    merged["wall_s"] = max(rec["wall_s"] for rec in records)
    merged["commands"] = [rec["command"] for rec in records]
    merged["command"] = "python tools/compare_search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    merged["baseline_measured_ms"] = statistics.fmean(rec["baseline_measured_ms"] for rec in records)
    saved = {k: v for k, v in records[0]["args"].items()}
    args.seeds = sorted({r["seed"] for r in merged["runs"]})
    for key in ("episodes", "train_samples", "train_epochs", "val_samples", "test_samples", "recover_steps"):
        setattr(args, key, int(saved[key]))
    write_json_atomic(args.out.with_suffix(".json"), merged)
    write_text_atomic(args.out, render(merged, args))
    ui.log(f"wrote {args.out} from {len(records)} runs")
    return 0


def _rows(record: dict[str, Any], speedup: float) -> dict[str, dict[str, list[float]]]:
    by: dict[str, dict[str, list[float]]] = {}
    for r in record["runs"]:
        if r["speedup"] != speedup:
            continue
        d = by.setdefault(r["requested"], {k: [] for k in ("acc_pruned", "acc_recovered", "measured_speedup", "pred", "search_s")})
        d["acc_pruned"].append(r["acc_pruned"])
        d["acc_recovered"].append(r["acc_recovered"])
        d["measured_speedup"].append(r["measured_speedup"])
        d["pred"].append(r["baseline_pred_ms"] / r["predicted_ms"])
        d["search_s"].append(r["search_s"])
    return by


def render(record: dict[str, Any], args: argparse.Namespace) -> str:
    speedups = sorted({r["speedup"] for r in record["runs"]})
    lines = [
        "# Width search comparison: knapsack, greedy, uniform, AMC (DDPG), PPO",
        "",
        "Generated by " + ", ".join(f"`{c.strip()}`" for c in record.get("commands", [record["command"]]))
        + (f", then `{record['command'].strip()}`" if "commands" in record else "")
        + f" (`tools/compare_search.py`); raw numbers in `search_comparison.json`. "
        f"Wall time {record['wall_s'] / 60:.1f} min on this shared 2-core machine (load from other jobs), torch on 1 thread.",
        "",
        f"Model: CIFAR-style ResNet-20 (`{ARCH}`, 1x28x28), trained here for {args.train_epochs} epochs on {args.train_samples} "
        f"Fashion-MNIST training images: {record['base_accuracy']:.2f}% on {args.test_samples} test images. "
        f"Latency model: the CPU target's table ({record['latency_source'].get('kind', '?') if isinstance(record['latency_source'], dict) else record['latency_source']}); "
        f"the baseline measures {record['baseline_measured_ms']:.3f} ms in ONNX Runtime at batch {SHAPE[0]} "
        f"(latency is predicted and measured at batch {SHAPE[0]}: at batch 1 per-kernel overheads dominate this small network).",
        "",
        "Per method and target: accuracy (%, test subset) right after pruning (BN statistics recalibrated, no training) and after "
        f"{args.recover_steps} recovery steps (batch 64, distillation from the unpruned model; the same for every method), the "
        "predicted and the measured ONNX Runtime speedup (all plans timed interleaved in one run, batch 32), and the search's wall time. "
        f"Mean ± standard deviation over seeds {', '.join(map(str, args.seeds))}: the seed drives the RL agents and the recovery; "
        "knapsack, greedy and uniform find one plan per target, so their spread is the recovery's alone.",
        f"RL searches: {args.episodes} episodes each; reward = accuracy on {args.val_samples} held-out training images after BN "
        "recalibration; `ppo` runs its pruning agent only here (every method is compared at FP32: the quantization agent needs the INT8 pipeline to be measured).",
        "",
    ]
    verdicts = []
    for s in speedups:
        by = _rows(record, s)
        asked = {r["requested_speedup"] for r in record["runs"] if r["speedup"] == s}
        note = "" if asked == {s} else f" (asked for {', '.join(f'{a:g}x' for a in sorted(asked))}: beyond the best the width floors reach by the latency model)"
        lines += [f"## Target {s:g}x (predicted){note}", "", "| method | acc. after pruning | acc. after recovery | predicted speedup | measured speedup | search time (s) |",
                  "|---|---|---|---|---|---|"]
        for m, d in by.items():
            lines.append(f"| {m} | {spread(d['acc_pruned'])} | {spread(d['acc_recovered'])} | {spread(d['pred'])} | {spread(d['measured_speedup'])} | {spread(d['search_s'])} |")
        lines.append("")
        best_rec = max(by, key=lambda m: statistics.fmean(by[m]["acc_recovered"]))
        best_pruned = max(by, key=lambda m: statistics.fmean(by[m]["acc_pruned"]))
        verdicts.append(f"- **{s:g}x**: best after recovery: **{best_rec}** ({statistics.fmean(by[best_rec]['acc_recovered']):.2f}%); "
                        f"best right after pruning: **{best_pruned}** ({statistics.fmean(by[best_pruned]['acc_pruned']):.2f}%).")
        if "knapsack" in by:
            k = statistics.fmean(by["knapsack"]["acc_recovered"])
            for m in RL:
                if m in by:
                    diff = statistics.fmean(by[m]["acc_recovered"]) - k
                    sd = max(statistics.stdev(by[m]["acc_recovered"]) if len(by[m]["acc_recovered"]) > 1 else 0.0, 1e-9)
                    word = "beats" if diff > sd else "loses to" if diff < -sd else "ties (within one std of)"
                    verdicts.append(f"  - {m} {word} the knapsack after recovery ({diff:+.2f} points), at "
                                    f"{statistics.fmean(by[m]['search_s']) / max(statistics.fmean(by['knapsack']['search_s']), 1e-9):.0f}x its search time.")
    lines += ["## Which wins where", "", *verdicts, "",
              f"Read this at its size: a base model at {record['base_accuracy']:.0f}% after a short training, "
              f"{args.recover_steps} recovery steps, {args.test_samples} test images (one image = {100 / args.test_samples:.1f} points) "
              "and RL searches of a few tens of episodes (AMC used hundreds). Every plan loses most of its accuracy at these "
              "budgets, so differences of a few points are within the seed spread. The RL searches cost 30-170x the "
              "knapsack's wall time (each episode cuts, recalibrates and evaluates a model); a larger run is the same command "
              "with the defaults (`--train-samples 15000 --train-epochs 2 --episodes 40 ...`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
