"""Pruning at full size, as deployed: latency-guided knapsack vs a uniform plan vs Torch-Pruning.

    .venv/bin/python tools/bench_pruning.py        # writes docs/pruning.md (+ build/bench_pruning/results.json)

1. A CIFAR-style ResNet-20 (width 16, 1x28x28) is trained here on the whole Fashion-MNIST
   training set (60,000 images) with SGD and a one-cycle schedule; test accuracy on the 10,000
   test images is recorded after every epoch, so the doc shows where it converged.
2. For every budget S, `hadmc-deploy build --target cpu --speedup S` runs in a fresh process,
   exactly as a user runs it, once with the latency-guided knapsack search and once with
   `--search uniform` (one keep ratio for every group, Torch-Pruning's usual setting, chosen
   against the same latency budget). Both recover with the same distillation (the build's,
   --epochs over the whole training set) and both end in the build's measured decision: the
   deployed artifact (FP32, INT8 or mixed, pruned or not) within the accuracy guard.
3. Where `torch_pruning` installs, Torch-Pruning itself prunes the base model at the uniform
   plan's keep ratio (its MagnitudePruner, L1, channels rounded to 8, Torch-Pruning's usual
   `round_to`: the uniform plan itself follows the step measured on this CPU); the result
   gets the same recovery (the build's recovery function and options) and is then built with
   `hadmc-deploy build --trust-model` without a budget (export, INT8, decision).
4. Every deployed artifact and the original's FP32 and INT8 artifacts are then timed side by
   side in one process (interleaved rounds, batch 32 and 1), so every speedup in the table
   comes from one run on one machine state.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hadmc_deploy.backends import Artifact, get
from hadmc_deploy.build.stages.recover import recovery_options, split_held_out
from hadmc_deploy.data import Preprocess, load_data
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
from hadmc_deploy.loading import build_arch, load_model
from hadmc_deploy.options import RecoverySettings
from hadmc_deploy.recover import recover
from hadmc_deploy.train import evaluate_accuracy, train_classifier
from hadmc_deploy.ui import UI

ROOT = Path(__file__).resolve().parents[1]
ARCH = "hadmc_deploy.models.resnet:cifar_resnet"
TRAIN, TEST = "builtin:fashion-mnist:train", "builtin:fashion-mnist:test"
SHAPE = (1, 1, 28, 28)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(ROOT / "build" / "bench_pruning"))
    p.add_argument("--doc", default=str(ROOT / "docs" / "pruning.md"))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--speedups", default="1.5,2", help="latency budgets (at --precision, batch 32)")
    p.add_argument("--precision", default="fp32", help="the pruned builds' precision: their budget is measured against the original at it "
                   "(on CPUs where INT8 of narrow layers does not pay, an INT8 budget stops at prediction)")
    p.add_argument("--tp-speedups", default="2", help="budgets whose uniform plan Torch-Pruning reproduces")
    p.add_argument("--base-epochs", type=int, default=12)
    p.add_argument("--base-lr", type=float, default=0.1)
    p.add_argument("--train-limit", type=int, default=None, help="training images (default: all 60,000)")
    p.add_argument("--recover-epochs", type=float, default=3)
    p.add_argument("--guard", type=float, default=0.5, help="accuracy guard of every build (points)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds of the deployed artifacts")
    p.add_argument("--no-torch-pruning", action="store_true")
    p.add_argument("--render", action="store_true", help="only rewrite the doc from the results.json of the last run")
    return p.parse_args()


def base_model(args: argparse.Namespace, work: Path, ui: UI) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the base ResNet-20; the record holds the per-epoch test accuracy."""
    kwargs = {"depth": 20, "num_classes": 10, "in_channels": 1, "width": args.width}
    config = {"kwargs": kwargs, "epochs": args.base_epochs, "lr": args.base_lr, "train_limit": args.train_limit}
    ckpt, record_path = work / "resnet20.pth", work / "resnet20.json"
    if ckpt.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("config") == config:
            return ckpt, record
    train = load_data(TRAIN, Preprocess(), limit=args.train_limit, seed=0)
    test = load_data(TEST, Preprocess())
    torch.manual_seed(0)
    model = build_arch(ARCH, dict(kwargs))
    curve: list[float] = []

    def on_epoch(epoch: int, m: torch.nn.Module) -> None:
        curve.append(round(evaluate_accuracy(m, test), 2))
        ui.log(f"base epoch {epoch}: test accuracy {curve[-1]:.2f}%")

    start = time.perf_counter()
    train_classifier(model, train, epochs=args.base_epochs, lr=args.base_lr, batch_size=128, seed=0, ui=ui, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    torch.save({"arch": ARCH, "arch_kwargs": kwargs, "state_dict": model.state_dict(), "input_shape": list(SHAPE)}, ckpt)
    record = {"config": config, "accuracy": curve[-1], "curve": curve, "train_images": len(train), "train_seconds": round(seconds)}
    write_json_atomic(record_path, record)
    return ckpt, record


def run_build(name: str, model: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """`hadmc-deploy build` in a fresh process; the row is read from its report.json (cached by command)."""
    cmd = [sys.executable, "-m", "hadmc_deploy", "build", str(model), "--target", "cpu", "--input-shape", f"32,{SHAPE[1]},{SHAPE[2]},{SHAPE[3]}",
           "--batch", "32", "1", "--train", TRAIN, "--eval", TEST, "--epochs", f"{args.recover_epochs:g}",
           "--max-accuracy-drop", f"{args.guard:g}", "--out", str(out), "-q", *extra]
    if args.train_limit:
        cmd += ["--train-limit", str(args.train_limit)]
    done = out / "bench_row.json"
    if done.is_file() and json.loads(done.read_text()).get("cmd") == cmd[2:]:
        return json.loads(done.read_text())
    print("$ hadmc-deploy " + " ".join(cmd[3:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    row: dict[str, Any] = {"name": name, "cmd": cmd[2:], "exit": proc.returncode, "seconds": round(time.perf_counter() - start),
                           "last_line": (proc.stderr.strip().splitlines() or [""])[-1]}
    report_path = out / "report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        decision = report.get("decision") or {}
        candidates = {c["name"]: c for c in decision.get("candidates", [])}
        deployed = decision.get("deploy")
        row.update({
            "deploy": deployed, "artifact": str(out / decision["artifact"]) if decision.get("artifact") else None,
            "deploy_accuracy": (candidates.get(deployed) or {}).get("accuracy"),
            "candidates": decision.get("candidates", []),
            "own_speedup_vs_fp32": decision.get("speedup_vs_fp32_original"),
            "budget": decision.get("budget"),
            "keep": {w["group"]: w["after"] for w in report.get("width_plan") or []} or None,
            "full": {w["group"]: w["before"] for w in report.get("width_plan") or []} or None,
            "recovery": (report.get("recovery") or {}).get("accuracy"),
            "baseline_artifacts": {v: str(out / "artifacts" / "cpu" / v) for v in ("baseline-fp32", "baseline-int8")},
        })
    write_json_atomic(done, row)
    print(json.dumps({k: row.get(k) for k in ("name", "exit", "deploy", "deploy_accuracy", "own_speedup_vs_fp32", "seconds")}), flush=True)
    return row


def torch_pruning_model(ckpt: Path, keep_ratio: float, step: int, out: Path, args: argparse.Namespace, ui: UI) -> Path | None:
    """Torch-Pruning's uniform L1 pruning at `keep_ratio`, then the build's recovery; a full pickle (build --trust-model)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    path = out / "tp_recovered.pth"
    if path.is_file():
        return path
    teacher, student = load_model(ckpt).model.eval(), load_model(ckpt).model.eval()
    pruner = tp.pruner.MagnitudePruner(student, torch.randn(*SHAPE), importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=1 - keep_ratio, round_to=step, ignored_layers=[student.fc])
    pruner.step()
    train = load_data(TRAIN, Preprocess(), limit=args.train_limit, seed=0)
    tr, val = split_held_out(train, 0)
    settings = RecoverySettings(epochs=args.recover_epochs, lr=0.01, batch_size=128, distill=True, kd_temperature=4.0,
                                kd_alpha=0.7, feature_weight=1.0, feature_layers=())
    result = recover(student, teacher, tr, val, recovery_options(settings, 0, len(tr)), ui)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.model.eval(), path)
    return path


def time_side_by_side(artifacts: dict[str, str], batch: int, rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of each artifact's p50 at `batch` (one process, one machine state).

    The sessions are ONNX Runtime's deployment sessions except that idle worker threads block
    instead of spinning (`latency.repeat.measuring_session`): with eight sessions alive, spinning
    workers of one session would compete with the next for the two cores."""
    from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers
    from hadmc_deploy.backends.ort_session import random_feeds
    from hadmc_deploy.latency.repeat import measuring_session

    loaded = {name: Artifact.load(Path(p)) for name, p in artifacts.items()}
    sessions = {name: measuring_session(a.model_path, None, artifact_disabled_optimizers(a.metadata)) for name, a in loaded.items()}
    feeds = {name: random_feeds(sess, batch=batch) for name, sess in sessions.items()}
    runs = 40 if batch == 1 else 15
    for name, sess in sessions.items():  # warm-up: arenas, caches, thread pools
        for _ in range(5):
            sess.run(None, feeds[name])
    per_round: dict[str, list[float]] = {n: [] for n in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feeds[name])
                times.append((time.perf_counter() - start) * 1000.0)
            per_round[name].append(statistics.median(times))
    return {n: statistics.median(v) for n, v in per_round.items()}


def width_probe(ckpt: Path, work: Path, rounds: int) -> dict[str, dict[str, float]]:
    """The original at uniform widths (multiples of 8), built as deployed at FP32 and INT8 and timed
    interleaved at batch 32: whether narrowing pays at each precision on this CPU."""
    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.latency.whole_model import time_plans

    model = load_model(ckpt).model.eval()
    shape = (32, *SHAPE[1:])
    graph = trace(model, shape)
    full = graph.full_widths()
    plans = {"100%": full}
    for keep in (0.75, 0.5, 0.375):
        plans[f"{keep:.1%}".replace(".0%", "%")] = {**full, **{g.id: max(8, round(g.width * keep / 8) * 8) for g in graph.prunable_groups}}
    out = {}
    for precision in ("fp32", "int8"):
        timed = time_plans(model, graph, plans, shape, get("onnxruntime"), workdir=work / f"probe-{precision}", rounds=rounds, exporter="fast", precision=precision)
        out[precision] = {name: t.median_ms for name, t in zip(plans, timed, strict=True)}
    return out


def uniform_keep_ratio(keep: dict[str, int], full: dict[str, int]) -> float:
    return statistics.median(keep[g] / full[g] for g in keep if full.get(g))


def main() -> None:
    args = parse_args()
    ui = UI()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.render:
        write_text_atomic(Path(args.doc), with_notes(markdown(json.loads((work / "results.json").read_text()), args), Path(args.doc)))
        return
    ckpt, base = base_model(args, work, ui)
    ui.log(f"base ResNet-20: {base['accuracy']:.2f}% after {len(base['curve'])} epochs (curve {base['curve']})")
    # the build without a budget: no pruning, the fastest measured precision (INT8 where it pays)
    rows: list[dict[str, Any]] = [{**run_build("no budget", ckpt, work / "no-budget", args, []), "method": "none (precision only)", "speedup": None}]
    tp_speedups = {float(s) for s in args.tp_speedups.split(",") if s}
    for speedup in [float(s) for s in args.speedups.split(",")]:
        for method in ("knapsack", "uniform"):
            extra = ["--speedup", f"{speedup:g}", "--search", method, "--precision", args.precision]
            rows.append({**run_build(f"{method}-{speedup:g}x", ckpt, work / f"{method}-x{speedup:g}", args, extra), "method": method, "speedup": speedup})
        uniform = rows[-1]
        if not args.no_torch_pruning and uniform.get("keep") and speedup in tp_speedups:
            ratio = uniform_keep_ratio(uniform["keep"], uniform["full"])
            tp_path = torch_pruning_model(ckpt, ratio, 8, work / f"tp-x{speedup:g}", args, ui) if ratio else None
            if tp_path is not None:
                row = run_build(f"torch-pruning-{speedup:g}x", tp_path, work / f"tp-x{speedup:g}", args, ["--trust-model", "--precision", args.precision])
                rows.append({**row, "method": "torch-pruning", "speedup": speedup, "keep_ratio": ratio})
    first = rows[0]
    if not first.get("candidates"):
        sys.exit(f"the build without a budget failed (exit {first['exit']}): {first['last_line']}")
    reference_accuracy = next(c["accuracy"] for c in first["candidates"] if c["name"] == "baseline-fp32")
    artifacts = {"original FP32": first["baseline_artifacts"]["baseline-fp32"], "original INT8": first["baseline_artifacts"]["baseline-int8"]}
    artifacts.update({r["name"]: r["artifact"] for r in rows if r.get("artifact")})
    timings = {b: time_side_by_side(artifacts, b, args.rounds) for b in (32, 1)}
    probe = width_probe(ckpt, work, args.rounds)
    results = {"width_probe": probe, "base": base, "rows": rows, "timings": {str(b): t for b, t in timings.items()}, "reference_accuracy": reference_accuracy,
               "machine": get("onnxruntime").describe_device(), "created": time.strftime("%Y-%m-%d %H:%M")}
    write_json_atomic(work / "results.json", results)
    write_text_atomic(Path(args.doc), with_notes(markdown(results, args), Path(args.doc)))
    print(Path(args.doc).read_text())


def markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    base, rows, ref = res["base"], res["rows"], res["reference_accuracy"]
    t32, t1 = res["timings"]["32"], res["timings"]["1"]
    device = res["machine"]
    total = next((sum(r["full"].values()) for r in rows if r.get("full")), "all")
    lines = [
        "# Pruning at full size, as deployed",
        "",
        f"Generated by `.venv/bin/python tools/bench_pruning.py --speedups {args.speedups} --tp-speedups {args.tp_speedups} --base-epochs {args.base_epochs} "
        f"--recover-epochs {args.recover_epochs:g} --guard {args.guard:g}` ({res['created']}); every number below comes from that run.",
        "",
        f"**Model.** CIFAR-style ResNet-20 (width {args.width}, 1x28x28), trained here on {base['train_images']:,} Fashion-MNIST training "
        f"images for {len(base['curve'])} epochs (SGD, one-cycle, lr {args.base_lr:g}; {base['train_seconds']} s). Test accuracy on the "
        f"10,000 test images after each epoch: {', '.join(f'{a:.2f}' for a in base['curve'])}%. The FP32 original scores **{ref:.2f}%** in the builds.",
        "",
        f"**Builds.** `hadmc-deploy build resnet20.pth --target cpu --speedup S [--search uniform] --precision {args.precision} --input-shape 32,1,28,28 --batch 32 1 "
        f"--train {TRAIN} --eval {TEST} --epochs {args.recover_epochs:g} --max-accuracy-drop {args.guard:g}`: the latency budget S is "
        f"measured against the original at {args.precision.upper()}, batch 32. The first row is the same build without a budget "
        "(no pruning; INT8 deployed where it was measured faster). Recovery is the build's distillation (logit KD T=4, alpha 0.7, feature alignment) "
        f"over the whole training set for {args.recover_epochs:g} epochs, the same for every method; the build then deploys the fastest "
        f"measured variant within {args.guard:g} points of the FP32 original. Torch-Pruning rows: its MagnitudePruner (L1, channels rounded to 8) at the uniform "
        "plan's keep ratio, the same recovery, then `hadmc-deploy build --trust-model` without a budget.",
        "",
        f"**Latency.** Every deployed artifact and the original's FP32 and INT8 artifacts timed side by side in one process "
        f"({args.rounds} interleaved rounds, median of per-round p50s) with ONNX Runtime {device.get('onnxruntime', '')} on "
        f"{device.get('name', platform.processor())} ({device.get('isa', '')}, {device.get('threads', '?')} threads).",
        "",
        f"| budget | method | exit | deployed variant | the plan's kept channels (of {total}) | accuracy | change vs FP32 original | x FP32 original (b32) | x INT8 original (b32) | x FP32 original (b1) | ms b32 | ms b1 |",
        "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| - | original FP32 | - | - | all | {ref:.2f}% | - | 1.00x | {t32['original FP32'] / t32['original INT8']:.2f}x slower | 1.00x | {t32['original FP32']:.3f} | {t1['original FP32']:.3f} |",
        f"| - | original INT8 | - | - | all | - | - | {t32['original FP32'] / t32['original INT8']:.2f}x | 1.00x | {t1['original FP32'] / t1['original INT8']:.2f}x | {t32['original INT8']:.3f} | {t1['original INT8']:.3f} |",
    ]
    for r in rows:
        name = r["name"]
        budget = f"{r['speedup']:g}x" if r.get("speedup") else "none"
        if name not in t32:
            lines.append(f"| {budget} | {r['method']} | {r['exit']} | nothing built: {r['last_line'][:160]} | - | - | - | - | - | - | - | - |")
            continue
        keep = r.get("keep")
        kept = f"{sum(keep.values())}" if keep else (f"keep ratio {r['keep_ratio']:.2f}" if r.get("keep_ratio") else "-")
        acc = r.get("deploy_accuracy")
        deployed = r.get("deploy") or "-"
        if r["method"] == "torch-pruning" and deployed.startswith("baseline-"):
            deployed = "Torch-Pruning's model, " + deployed.removeprefix("baseline-")  # that build's "original" is the TP-pruned model
        lines.append(
            f"| {budget} | {r['method']} | {r['exit']} | {deployed} | {kept} | {acc:.2f}% | {acc - ref:+.2f} | "
            f"**{t32['original FP32'] / t32[name]:.2f}x** | {t32['original INT8'] / t32[name]:.2f}x | {t1['original FP32'] / t1[name]:.2f}x | "
            f"{t32[name]:.3f} | {t1[name]:.3f} |"
        )
    if "no budget" in t32 and rows[0].get("deploy") == "baseline-int8":
        same = t32["original INT8"] / t32["no budget"]
        lines += ["", f"The *original INT8* row and the *no budget* row are the same graph (that build's `baseline-int8` and its `deploy/` copy): "
                  f"their ratio, {same:.2f}x at batch 32, is this run's timing noise. Read the speedups with that margin."]
    timed = [r for r in rows if r["name"] in t32 and r.get("deploy_accuracy") is not None and ref - r["deploy_accuracy"] <= args.guard]
    if timed:
        best = max(timed, key=lambda r: t32["original FP32"] / t32[r["name"]])
        x = t32["original FP32"] / t32[best["name"]]
        lines += ["", f"**Best deployed artifact within {args.guard:g} points:** {best['name']} ({best.get('deploy')}), {x:.2f}x over the FP32 original "
                  f"at batch 32, {best['deploy_accuracy'] - ref:+.2f} points: the aim of >= 3x at <= 0.5 points is {'met' if x >= 3 else 'not met'} in this run."]
    probe = res.get("width_probe")
    if probe:
        names = list(probe["fp32"])
        lines += ["", "**Does narrowing pay at each precision on this CPU?** The original at uniform widths (every group rounded to 8), "
                  "built as deployed and timed interleaved at batch 32 (ms; `width_probe`):", "",
                  "| precision | " + " | ".join(f"{n} width" for n in names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {p.upper()} | " + " | ".join(f"{probe[p][n]:.3f}" for n in names) + " |" for p in ("fp32", "int8")]
    se = 100 * (0.9 * 0.1 / 10000) ** 0.5
    lines += [
        "",
        f"One accuracy on 10,000 test images has a binomial standard error of about ±{se:.2f} points (at 90%): differences below "
        f"~{2 * se:.1f} points are within noise. Exit codes: 0 met; 14 the latency budget was not met when measured; 15 the accuracy "
        "guard excluded the variant that would have met it (the build then deployed the best variant within the guard).",
        "",
        "Per build, the candidates it timed itself (p50 at batch 32 in its own side-by-side run) and their accuracy:",
        "",
    ]
    for r in rows:
        cands = ", ".join(f"{c['name']} {c['p50_ms']:.3f} ms {c['accuracy']:.2f}%" + (" (excluded)" if c.get("excluded") else "") for c in r.get("candidates", []))
        lines.append(f"- **{r['name']}** (exit {r['exit']}, {r['seconds']} s): {cands or r.get('last_line', '')}")
    lines += ["", "Kept widths per group:", ""]
    for r in rows:
        if r.get("keep"):
            lines.append(f"- {r['name']}: " + ", ".join(f"{g}={k}" for g, k in r["keep"].items()))
    return "\n".join(lines) + "\n"


NOTES = ("<!-- notes:begin -->", "<!-- notes:end -->")


def with_notes(text: str, doc: Path) -> str:
    """The generated page plus the hand-written reading of a run kept between NOTES markers (a
    new run keeps them; they name the run they read, so a stale reading shows its date)."""
    old = doc.read_text() if doc.exists() else ""
    if NOTES[0] in old and NOTES[1] in old:
        return text + "\n" + old[old.index(NOTES[0]) : old.index(NOTES[1]) + len(NOTES[1])] + "\n"
    return text


if __name__ == "__main__":
    main()
