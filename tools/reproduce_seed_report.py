"""Reproduce the HAD-MC 2.0 seed report's table honestly, with our pipeline, on real data.

The seed report claimed, for a 25,784,578-parameter CNN (hadmc_deploy/models/seed_cnn.py),
a 50.09% parameter cut to 12,869,634, a 2.28x speedup and "100% accuracy" - measured on
synthetic images a colour mean separates, with weight-only fake INT8. Here:

Part A (the seed CNN): train it on a real 2-class task (Fashion-MNIST T-shirt/top vs Shirt,
resized to 3x224x224), then run `hadmc-deploy build --target cpu` twice: at the seed's
parameter budget (a given width plan: the last conv halved, ~50% of the parameters) and at
its latency budget (--speedup 2.28, latency-guided search). Real INT8 (QDQ, calibrated on
real images) is built and measured in ONNX Runtime next to FP32.

Part B (a ResNet-style model, the demo CNN on 10-class Fashion-MNIST): the latency-guided
knapsack search against uniform pruning at the same --speedup, both with recovery and INT8.

Every number in docs/results.md comes from one run of this script; the command and the
sizes used are written at the top of the file. Timings are ratios measured in one run.

    .venv/bin/python tools/reproduce_seed_report.py                # full size (~30-40 min on 2 cores)
    .venv/bin/python tools/reproduce_seed_report.py --small        # reduced sizes, stated in the output
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEED_CLAIM = {"params_before": 25_784_578, "params_after": 12_869_634, "param_cut_pct": 50.09, "speedup": 2.28, "accuracy": "100%", "data": "synthetic images separable by colour mean", "int8": "weight-only fake quantization"}
FMNIST_CLASSES = (0, 6)
NO_CACHE: list[bool] = []  # set from --no-cache in main() (a list so run_build sees it without a global statement)  # T-shirt/top vs Shirt: a real, confusable pair


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/seed-report", help="work directory (builds, data, checkpoints)")
    p.add_argument("--doc", default="docs/results.md", help="Markdown file to write")
    p.add_argument("--small", action="store_true", help="reduced sizes for a quick run (stated in the doc)")
    p.add_argument("--train-images", type=int, default=2000, help="seed CNN: training images (2 classes)")
    p.add_argument("--eval-images", type=int, default=1000, help="seed CNN: test images")
    p.add_argument("--demo-train", type=int, default=20000, help="demo CNN: training images")
    p.add_argument("--runs", type=int, default=20, help="timed runs per benchmark")
    p.add_argument("--demo-speedup", type=float, default=1.4, help="part B latency budget (2x is beyond this small model's floors even at batch 32)")
    p.add_argument("--skip-demo", action="store_true", help="only part A")
    p.add_argument("--no-cache", action="store_true", help="rerun every build stage (default: reuse stages whose inputs and code are unchanged)")
    args = p.parse_args(argv)
    if args.small:
        args.train_images, args.eval_images, args.demo_train, args.runs = 600, 400, 8000, 10
    return args


def two_class_npz(out: Path, split: str, n: int, seed: int = 0) -> Path:
    """A Fashion-MNIST subset with labels 0/1, as an .npz the pipeline's data loader reads."""
    from hadmc_deploy.data import FASHION_MNIST_DIR, Preprocess, load_data

    if not FASHION_MNIST_DIR.is_dir():
        sys.exit(f"Fashion-MNIST not found at {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    raw = load_data(f"builtin:fashion-mnist:{split}", Preprocess(mean=(0.0,), std=(1.0,)))  # pixels in [0, 1]
    x, y = raw.x, raw.y
    keep = np.flatnonzero(np.isin(y, FMNIST_CLASSES))
    keep = np.sort(np.random.default_rng(seed).permutation(keep)[:n])
    labels = (y[keep] == FMNIST_CLASSES[1]).astype(np.int64)
    path = out / f"fmnist-{FMNIST_CLASSES[0]}v{FMNIST_CLASSES[1]}-{split}-{n}.npz"
    np.savez(path, x=x[keep], y=labels)
    return path


def train_seed_cnn(out: Path, train_npz: Path, eval_npz: Path, log: list[str]) -> Path:
    from hadmc_deploy.data import Preprocess, load_data
    from hadmc_deploy.models.seed_cnn import SEED_CNN_ARCH, SEED_CNN_INPUT_SHAPE, SEED_CNN_PARAMS, seed_cnn
    from hadmc_deploy.train import evaluate_accuracy, train_classifier
    from hadmc_deploy.ui import UI

    ckpt = out / "seed_cnn.pth"
    record = out / "seed_cnn.json"
    key = {"train": str(train_npz), "eval": str(eval_npz), "torch": torch.__version__, "epochs": 1, "lr": 0.01, "seed": 0}
    if ckpt.is_file() and record.is_file() and json.loads(record.read_text()).get("key") == key:
        log.append(json.loads(record.read_text())["line"] + " (checkpoint reused from the earlier run with the same settings)")
        return ckpt
    pre = Preprocess(resize=SEED_CNN_INPUT_SHAPE[2:], channels=3)
    torch.manual_seed(0)
    model = seed_cnn()
    params = sum(p.numel() for p in model.parameters())
    assert params == SEED_CNN_PARAMS, params
    train = load_data(str(train_npz), pre)
    start = time.perf_counter()
    train_classifier(model, train, epochs=1, lr=0.01, batch_size=32, seed=0, ui=UI())
    seconds = time.perf_counter() - start
    acc = evaluate_accuracy(model, load_data(str(eval_npz), pre), batch_size=64)
    torch.save({"arch": SEED_CNN_ARCH, "arch_kwargs": {}, "state_dict": model.state_dict(), "input_shape": list(SEED_CNN_INPUT_SHAPE)}, ckpt)
    line = f"seed CNN: {params:,} parameters (the seed's count), trained 1 epoch on {len(train)} images in {seconds:.0f} s; test accuracy {acc:.2f}%"
    record.write_text(json.dumps({"key": key, "line": line}))
    log.append(line)
    return ckpt


def param_budget_plan(ckpt: Path, out: Path) -> Path:
    """The seed's parameter budget as a width plan: the conv feeding the big Linear halved (128 -> 64)."""
    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.graph.types import WidthPlan
    from hadmc_deploy.loading import load_model

    loaded = load_model(ckpt)
    graph = trace(loaded.model, tuple(loaded.info["input_shape"]))
    group = next(g for g in graph.groups if g.prunable and g.width == 128)
    path = out / "seed_param_budget_plan.json"
    path.write_text(WidthPlan(keep={group.id: 64}).to_json())
    return path


def run_build(model: Path, out: Path, extra: list[str], common: list[str]) -> dict[str, Any]:
    from hadmc_deploy.cli import main

    argv = ["build", str(model), "--target", "cpu", "--out", str(out), *common, *extra]
    if NO_CACHE:
        argv.append("--no-cache")
    rc = main(argv)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return {"rc": rc, "argv": argv, "report": report}


def fmt(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def variant_rows(label: str, report: dict[str, Any], names: tuple[str, ...], batches: list[str], pred_batch: str | None = None) -> list[str]:
    rows = []
    by = {v["name"]: v for v in report.get("variants", [])}
    for name in names:
        v = by.get(name)
        if v is None:
            continue
        lat = v.get("latency", {})
        pred = v.get("predicted", {}).get(pred_batch or batches[0], {})
        cells = [f"{label}: {name}", f"{v['params']:,}", fmt(v.get("accuracy"), ".2f", "%")]
        cells += [fmt(lat.get(b, {}).get("p50_ms"), ".3f") for b in batches]
        cells += [fmt(v.get("speedup", {}).get(b), ".2f", "x") for b in batches]
        cells += [f"{v['file_bytes'] / 1e6:.2f} MB", fmt(pred.get("ms"), ".3f") + f" ({pred.get('source', '-')})"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def table(report_rows: list[str], batches: list[str], pred_batch: str | None = None) -> list[str]:
    head = ["variant", "params", "accuracy", *[f"p50 ms b{b}" for b in batches], *[f"speedup b{b}" for b in batches], "file", f"predicted ms b{pred_batch or batches[0]}"]
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|", *report_rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.no_cache:
        NO_CACHE.append(True)
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python tools/reproduce_seed_report.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    log: list[str] = []
    started = time.perf_counter()
    # ---- part A: the seed CNN -------------------------------------------------------------
    train_npz = two_class_npz(out, "train", args.train_images)
    eval_npz = two_class_npz(out, "test", args.eval_images)
    ckpt = train_seed_cnn(out, train_npz, eval_npz, log)
    common = ["--train", str(train_npz), "--calib", str(train_npz), "--eval", str(eval_npz), "--epochs", "1", "--batch-size", "32", "--lr", "0.005",
              "--calib-samples", "256", "--batch", "1", "8", "--runs", str(args.runs), "--warmup", "3", "-q"]
    a_param = run_build(ckpt, out / "seed-param-budget", ["--widths", str(param_budget_plan(ckpt, out))], common)
    a_lat = run_build(ckpt, out / "seed-latency-budget", ["--speedup", str(SEED_CLAIM["speedup"])], common)
    # ---- part B: the ResNet-style demo CNN ------------------------------------------------
    b_runs: dict[str, dict[str, Any]] = {}
    if not args.skip_demo:
        from hadmc_deploy.commands.demo import train_demo_model
        from hadmc_deploy.ui import UI

        demo_args = argparse.Namespace(out=str(out / "demo"), data=None, epochs=2, train_limit=args.demo_train, seed=0, retrain=False)
        demo_ckpt, record = train_demo_model(demo_args, UI())
        log.append(f"demo CNN (ResNet-style, 1x28x28): trained 2 epochs on {args.demo_train} Fashion-MNIST images; test accuracy {record['accuracy']:.2f}%")
        # Searched at batch 32 (a throughput deployment): at batch 1 this small model's INT8 latency is
        # mostly per-operator overhead, which no channel pruning removes (the search says so and stops).
        demo_common = ["--train", "builtin:fashion-mnist:train", "--eval", "builtin:fashion-mnist:test", "--train-limit", str(args.demo_train // 2),
                       "--input-shape", "32,1,28,28", "--lut-minutes", "3",
                       "--epochs", "1", "--calib-samples", "512", "--batch", "1", "32", "--runs", str(args.runs), "--warmup", "3", "-q"]
        for method in ("knapsack", "uniform"):
            b_runs[method] = run_build(demo_ckpt, out / f"demo-{method}", ["--speedup", str(args.demo_speedup), "--search", method, "--measure-lut"], demo_common)
    minutes = (time.perf_counter() - started) / 60
    write_doc(Path(args.doc), args, command, log, a_param, a_lat, b_runs, minutes)
    print(f"wrote {args.doc} ({minutes:.1f} min)")
    return 0 if all(r["rc"] == 0 for r in (a_param, a_lat, *b_runs.values())) else 1


def reading(param: dict[str, Any], lat: dict[str, Any]) -> list[str]:
    """The comparison in words, with the numbers it rests on (computed, never typed)."""
    def get(rep: dict[str, Any], name: str) -> dict[str, Any]:
        return next((v for v in rep.get("variants", []) if v["name"] == name), {})

    lines = ["Speedups are against the FP32 baseline measured in the same build (the two builds ran minutes apart on a shared machine, so compare ratios, not milliseconds, across them)."]
    p, q = get(param, "pruned-fp32"), get(lat, "pruned-fp32")
    if p.get("speedup") and q.get("speedup"):
        lines.append(
            f"At the seed's parameter budget the pruned FP32 model measured {p['speedup'].get('1', 0):.2f}x at batch 1 and {p['speedup'].get('8', 0):.2f}x at batch 8; "
            f"at its latency budget {q['speedup'].get('1', 0):.2f}x and {q['speedup'].get('8', 0):.2f}x, with INT8 on top "
            f"{get(lat, 'pruned-int8').get('speedup', {}).get('1', 0):.2f}x and {get(lat, 'pruned-int8').get('speedup', {}).get('8', 0):.2f}x. "
            f"The first Linear layer holds {100 * 128 * 28 * 28 * 256 / SEED_CLAIM['params_before']:.1f}% of the parameters, so a parameter budget is met by narrowing the layer "
            "that feeds it, while the convolutions at 224x224 and 112x112 hold most of the time."
        )
    return lines


def write_doc(path: Path, args: argparse.Namespace, command: str, log: list[str], a_param: dict, a_lat: dict, b_runs: dict, minutes: float) -> None:
    from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
    from hadmc_deploy.targets import cpu_model_name, detect_cpu_isa

    batches = ["1", "8"]
    lines = [
        "# Results: the seed report's table, reproduced honestly",
        "",
        f"Generated by `{command}` in {minutes:.1f} minutes on {cpu_model_name()} ({detect_cpu_isa()}), a shared machine: "
        "compare latencies as ratios within one table (they were measured side by side in one run).",
        "",
        f"Sizes: seed CNN trained on {args.train_images} and evaluated on {args.eval_images} Fashion-MNIST images (T-shirt/top vs Shirt, resized to 3x224x224); "
        f"demo CNN trained on {args.demo_train} images, evaluated on the 10,000-image test set; {args.runs} timed runs per latency."
        + (" **Reduced size run (--small).**" if args.small else ""),
        "",
        *[f"- {line}" for line in log],
        "",
        "## Part A: the seed CNN (25,784,578 parameters)",
        "",
        "What the seed report claimed (synthetic data separable by colour mean, weight-only fake INT8, no measured deployment):",
        "",
        "| claim | params before | params after | parameter cut | speedup | accuracy |",
        "|---|---|---|---|---|---|",
        f"| HAD-MC 2.0 seed report | {SEED_CLAIM['params_before']:,} | {SEED_CLAIM['params_after']:,} | {SEED_CLAIM['param_cut_pct']}% | {SEED_CLAIM['speedup']}x | {SEED_CLAIM['accuracy']} |",
        "",
        "What our pipeline measures (ONNX Runtime on this CPU, real INT8 QDQ calibrated on real images, accuracy on held-out real test images):",
        "",
    ]
    rows = variant_rows("baseline", a_param["report"], ("baseline-fp32", "baseline-int8"), batches)
    rows += variant_rows("param budget (conv3 128->64)", a_param["report"], ("pruned-fp32", "pruned-int8"), batches)
    rows += variant_rows(f"latency budget (--speedup {SEED_CLAIM['speedup']})", a_lat["report"], ("pruned-fp32", "pruned-int8"), batches)
    lines += table(rows, batches) + [""]
    for name, run in (("parameter budget", a_param), ("latency budget", a_lat)):
        rep = run["report"]
        acc = rep.get("accuracy", {})
        search = rep.get("search", {})
        pruned = next((v for v in rep.get("variants", []) if v["name"] == "pruned-fp32"), None)
        cut = 100 * (1 - pruned["params"] / rep["model"]["params"]) if pruned and rep.get("model", {}).get("params") else None
        lines.append(
            f"- {name}: exit code {run['rc']}; parameter cut {fmt(cut, '.2f', '%')}; search {search.get('method')} with the {rep.get('latency_model', {}).get('label', '-')} "
            f"predicted {fmt(search.get('predicted_speedup'), '.2f', 'x')}; accuracy baseline {fmt(acc.get('baseline'), '.2f', '%')} -> after pruning "
            f"{fmt(acc.get('pruned_before_recovery'), '.2f', '%')} -> after recovery {fmt(acc.get('after_recovery'), '.2f', '%')} -> final INT8 {fmt(acc.get('final'), '.2f', '%')}"
        )
    lines += ["", *reading(a_param["report"], a_lat["report"]), ""]
    if b_runs:
        lines += [f"## Part B: a ResNet-style model (the demo CNN), latency-guided vs uniform at --speedup {args.demo_speedup:g} (batch 32)", "",
                  "Both builds search against a latency table measured here at batch 32 (`--measure-lut --input-shape 32,1,28,28`), "
                  "with the same recovery budget (1 epoch of distillation on half the training images) and real INT8. "
                  "Speedups are against the FP32 baseline measured in the same build.", ""]
        batches_b = ["1", "32"]
        rows = variant_rows("baseline", b_runs["knapsack"]["report"], ("baseline-fp32", "baseline-int8"), batches_b, "32")
        for method, run in b_runs.items():
            rows += variant_rows(method, run["report"], ("pruned-fp32", "pruned-int8"), batches_b, "32")
        lines += table(rows, batches_b, "32") + [""]
        for method, run in b_runs.items():
            acc = run["report"].get("accuracy", {})
            s = run["report"].get("search", {})
            lines.append(f"- {method}: exit code {run['rc']}; predicted {fmt(s.get('predicted_speedup'), '.2f', 'x')} ({s.get('latency_source')}); accuracy baseline {fmt(acc.get('baseline'), '.2f', '%')} -> pruned {fmt(acc.get('pruned_before_recovery'), '.2f', '%')} -> recovered {fmt(acc.get('after_recovery'), '.2f', '%')} -> final INT8 {fmt(acc.get('final'), '.2f', '%')}")
        lines.append("")
    lines += ["Stages reused from the build cache (inputs, code and versions unchanged since they were measured):", ""]
    for name, run in (("seed parameter budget", a_param), ("seed latency budget", a_lat), *((f"demo {m}", r) for m, r in b_runs.items())):
        cached = [s["name"] for s in run["report"].get("stages", []) if s["status"] == "cached"]
        lines.append(f"- {name}: {', '.join(cached) if cached else 'none (every stage ran in this run)'}")
    lines += ["", "Build commands (each build's report.md holds the full tables, width plans, and versions):", ""]
    for run in (a_param, a_lat, *b_runs.values()):
        lines.append("    hadmc-deploy " + " ".join(run["argv"]))
    write_text_atomic(path, "\n".join(lines) + "\n")
    write_json_atomic(path.with_suffix(".json"), {"command": command, "log": log, "seed_claim": SEED_CLAIM, "builds": {k: v for k, v in (("seed_param_budget", a_param), ("seed_latency_budget", a_lat), *((f"demo_{m}", r) for m, r in b_runs.items()))}})


if __name__ == "__main__":
    sys.exit(main())
