"""`hadmc-deploy demo`: the README's first command. Train the demo CNN on real data, then build it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from hadmc_deploy.build.pipeline import build
from hadmc_deploy.config import merge_options
from hadmc_deploy.data import FASHION_MNIST_DIR, Preprocess, load_data
from hadmc_deploy.errors import BudgetError, UsageError
from hadmc_deploy.fileio import atomic_path, sha256_bytes, write_json_atomic, write_text_atomic
from hadmc_deploy.models.demo import DEMO_ARCH, DEMO_INPUT_SHAPE, demo_cnn
from hadmc_deploy.plan import BuildPlan, make_plan
from hadmc_deploy.targets import get_target
from hadmc_deploy.train import evaluate_accuracy, train_classifier
from hadmc_deploy.ui import UI

HELP = "train the demo CNN on Fashion-MNIST (or digits) and build it for this CPU"
DESCRIPTION = """The embedded default: train a small residual CNN on real data with a fixed seed
(Fashion-MNIST from /usr/share/datasets/fashion-mnist when installed, else scikit-learn's
digits), cache the checkpoint, then run `build` on it for --target cpu and print the report.

examples:
  hadmc-deploy demo
  hadmc-deploy demo --epochs 3 --out build/demo --retrain"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="build/demo", help="where the checkpoint and the build go (default build/demo)")
    parser.add_argument("--data", default=None, help="training data source (default builtin:fashion-mnist, else builtin:digits)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    parser.add_argument("--train-limit", type=int, default=30000, help="training samples used (default 30000, for speed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="train again even if a cached checkpoint matches")
    parser.add_argument("--target", default="cpu", help="target to build for (default cpu)")
    parser.add_argument("--speedup", type=float, default=1.25, help="measured speedup the pruning must deliver at batch 32 over the original at the same precision (default 1.25)")
    parser.add_argument("--no-build", action="store_true", help="only train and cache the checkpoint")


def default_data_source() -> tuple[str, str]:
    if FASHION_MNIST_DIR.is_dir():
        return "builtin:fashion-mnist:train", "builtin:fashion-mnist:test"
    return "builtin:digits:train", "builtin:digits:test"


def _arch_source_hash() -> str:
    import inspect

    from hadmc_deploy.models import demo, resnet

    return sha256_bytes((inspect.getsource(demo) + inspect.getsource(resnet)).encode())


def train_demo_model(args: argparse.Namespace, ui: UI) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the demo checkpoint; returns its path and its record."""
    out = Path(args.out)
    train_src, eval_src = (args.data, args.data.replace(":train", ":test")) if args.data else default_data_source()
    ckpt = out / "demo.pth"
    # The architecture's source is part of the key: a changed model definition must retrain,
    # never silently evaluate old weights in a new network.
    key = {"arch": DEMO_ARCH, "arch_source": _arch_source_hash(), "train": train_src, "epochs": args.epochs, "limit": args.train_limit, "seed": args.seed, "torch": torch.__version__}
    record_path = out / "demo.json"
    if ckpt.is_file() and record_path.is_file() and not args.retrain:
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            ui.log(f"using the cached demo model {ckpt} (test accuracy {record['accuracy']:.2f}%); --retrain to train again")
            return ckpt, record
    ui.log(f"training the demo CNN on {train_src} ({args.epochs} epochs, seed {args.seed})")
    train = load_data(train_src, Preprocess(), limit=args.train_limit, seed=args.seed)
    test = load_data(eval_src, Preprocess())
    torch.manual_seed(args.seed)
    model = demo_cnn(num_classes=max(train.num_classes, 10), in_channels=train.x.shape[1])
    start = time.perf_counter()
    train_classifier(model, train, epochs=args.epochs, seed=args.seed, ui=ui)
    seconds = time.perf_counter() - start
    acc = evaluate_accuracy(model, test)
    shape = [1, *train.x.shape[1:]]
    checkpoint = {
        "arch": DEMO_ARCH,
        "arch_kwargs": {"num_classes": max(train.num_classes, 10), "in_channels": int(train.x.shape[1])},
        "state_dict": model.state_dict(),
        "input_shape": shape,
        "train_data": train_src,
        "eval_data": eval_src,
        "accuracy": acc,
    }
    with atomic_path(ckpt) as tmp:
        torch.save(checkpoint, tmp)
    record = {"key": key, "checkpoint": str(ckpt), "accuracy": acc, "train_seconds": seconds, "input_shape": shape, "train_data": train_src, "eval_data": eval_src}
    write_json_atomic(record_path, record)
    ui.log(f"trained in {seconds:.0f}s: test accuracy {acc:.2f}% on {eval_src} ({len(test)} images); saved {ckpt}")
    return ckpt, record


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    if not args.no_build and args.speedup <= 1:  # before training, not after it
        raise UsageError(f"--speedup {args.speedup:g} must be greater than 1", hint="e.g. --speedup 1.5")
    ckpt, record = train_demo_model(args, ui)
    result: dict[str, Any] = {"checkpoint": str(ckpt), "demo_model": record}
    if args.no_build:
        return result
    result["build"] = demo_build(ckpt, record, target=args.target, speedup=args.speedup, out_dir=Path(args.out) / f"build-{args.target}", ui=ui, input_shape=tuple(record.get("input_shape", DEMO_INPUT_SHAPE)))
    return result


#: the batch the demo searches at: the demo CNN is overhead-bound at batch 1.
DEMO_SEARCH_BATCH = 32


def demo_build(checkpoint: Path, record: dict[str, Any], *, target: str, speedup: float, out_dir: Path, ui: UI, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The demo's build: a latency table measured here, short recovery on a training subset,
    512 calibration images, the full test set, every variant benchmarked.

    The demo model is small enough that at batch 1 its INT8 latency is mostly per-operator
    overhead, so the demo searches at batch 32, where it is compute-bound, and reports batch
    1 and 32. A --speedup that is out of reach is said so and the demo builds at the best
    reachable speedup (never silently).
    """

    def plan_for(s: float | None, widths: Path | None = None) -> BuildPlan:
        options = merge_options(
            {
                "target": target,
                "out": str(out_dir),
                "speedup": s,
                "widths": str(widths) if widths else None,
                "lut_minutes": 2.0,
                "train": record.get("train_data"),
                "eval": record.get("eval_data"),
                "train_limit": 30000,
                "epochs": 4.0,
                "calib_samples": 512,
                "batch": [1, 32],
                "runs": 30,
                "max_accuracy_drop": 1.0,
            }
        )
        search_shape = (DEMO_SEARCH_BATCH, *input_shape[1:])
        return make_plan(model=str(checkpoint), arch=None, arch_kwargs={}, input_shape=search_shape, trust_model=False, target=get_target(target), options=options)

    try:
        plan = plan_for(speedup)
        report = build(plan, ui)
    except BudgetError as exc:
        best = exc.best_speedup
        if best is None or best <= 1.05:
            raise
        out_of_reach = f"--speedup {speedup:g} is out of reach for this model on this target ({exc.message})"
        measured_plan = _measured_pruned_plan(out_dir)
        if measured_plan is not None:
            # --widths replaces the search (and its budget): the build deploys the fastest measured variant of that plan
            ui.warn(f"{out_of_reach}; the demo builds the plan it measured at {best:.2f}x again, without a budget")
            plan = plan_for(None, measured_plan)
        else:
            # 0.9 of the best: the best plan keeps every group at or near its minimum width.
            reachable = max(1.01, round(0.9 * best, 2))
            ui.warn(f"{out_of_reach}; the demo builds at --speedup {reachable:g} instead")
            plan = plan_for(reachable)
        report = build(plan, ui)
    return {"report": str(plan.out_dir / "report.json"), "speedup_requested": speedup, "speedup_built": plan.options["speedup"], "variants": report.get("variants", []), "accuracy": report.get("accuracy", {})}


def _measured_pruned_plan(out_dir: Path) -> Path | None:
    """The width plan of a build whose fastest allowed variant was pruned, copied beside the
    build: a retry at a budget below what that plan measured builds the same plan again rather
    than searching anew (a search at a looser budget prunes less, and on CPUs where narrower
    INT8 layers do not pay, a less pruned plan measured no faster than the original)."""
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    decision = report.get("decision") or {}
    best_measured = (decision.get("budget") or {}).get("best") or {}
    best = str(best_measured.get("variant") or decision.get("deploy") or "")
    plan = out_dir / "width_plan.json"
    if not best.startswith("pruned-") or not plan.exists():
        return None
    kept = out_dir.parent / f"{out_dir.name}-measured-width-plan.json"
    write_text_atomic(kept, plan.read_text())
    return kept
