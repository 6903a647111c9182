"""`hadmc-deploy prune`: the build's compression stages (load -> trace -> latency model ->
search -> surgery -> recover) with the build's options and defaults, then the pruned
checkpoint at -o and the original and pruned models timed side by side in ONNX Runtime."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import Any

from hadmc_deploy.build.pipeline import compress
from hadmc_deploy.build.stages.latency import round_to as plan_round_to
from hadmc_deploy.commands.build import plan_from_args
from hadmc_deploy.commands.common import add_model_argument
from hadmc_deploy.commands.prune_report import measure_side_by_side, print_summary, summary_markdown
from hadmc_deploy.config import add_build_arguments
from hadmc_deploy.errors import BudgetError, UsageError
from hadmc_deploy.fileio import atomic_path, write_json_atomic, write_text_atomic
from hadmc_deploy.ui import UI

HELP = "prune a model by a channel ratio or to a latency budget, recover it, and save a safe pruned checkpoint"
DESCRIPTION = """Trace MODEL's channel dependency graph, score channels, remove the least important
ones (physically: smaller tensors), recover accuracy (distillation on --train, BatchNorm
recalibration alone on --calib) and write a pruned checkpoint that every command accepts as MODEL.
This is `build` stopped after recovery: the same options, defaults and stage cache.

Give one budget:
  --ratio R        remove R of the channels of every prunable group (0 < R < 1)
  --macs-ratio R   remove R of the MACs (a uniform channel ratio found by bisection)
  --speedup X / --latency-ms T   latency-guided search on --target
  --widths PLAN    a width plan (e.g. an earlier build's width_plan.json)

examples:
  hadmc-deploy prune model.pth --arch hadmc_deploy.models.demo:demo_cnn --input-shape 1,1,28,28 --ratio 0.5 -o pruned.pth
  hadmc-deploy prune model.pth --arch models.py:resnet18 --macs-ratio 0.4 --round-to 8 --ignore layer4.1.conv2 -o r18_p.pth
  hadmc-deploy prune model.pth --arch models.py:net --input-shape 1,1,28,28 --speedup 2 --target cpu --train builtin:fashion-mnist:train -o p.pth"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    add_build_arguments(parser)
    parser.add_argument("-o", "--output", metavar="OUT", help="pruned checkpoint to write (.pth)")
    parser.add_argument("--config", metavar="TOML", help="options from a TOML file; command-line options override it")
    parser.set_defaults(resume=None, dry_run=False)


def _validate(args: argparse.Namespace) -> None:
    budgets = [name for name in ("ratio", "macs_ratio", "speedup", "latency_ms", "widths") if getattr(args, name) is not None]
    if len(budgets) != 1:
        raise UsageError("give exactly one of --ratio, --macs-ratio, --speedup, --latency-ms, --widths", hint="e.g. --ratio 0.5")
    if args.output is None:
        raise UsageError("no output given", hint="pass -o pruned.pth")
    if Path(args.output).is_dir():
        raise UsageError(f"-o {args.output} is a directory", hint="pass a file name such as pruned.pth")
    if args.round_to is None and args.target is None and (args.ratio is not None or args.macs_ratio is not None):
        # ratio pruning without a target keeps exact ratios (prune's behaviour before it joined the build)
        args.round_to = 1
    if args.out is None:
        rank = int(os.environ.get("RANK", "0"))
        out = Path(args.output)
        args.out = str(out.parent / f"{out.stem}-prune" / (f"rank{rank}" if rank else ""))


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    _validate(args)
    plan = plan_from_args(args, deploy=False)
    rank = int(os.environ.get("RANK", "0"))
    ctx = compress(plan, ui if rank == 0 else UI(quiet=True))
    if rank != 0:
        return {"rank": rank}
    res = ctx.results
    final = res["recover"].get("final") or ("pruned.pth" if not res["surgery"].get("_skipped") else None)
    if final is None:
        raise UsageError("the budget keeps every channel: nothing was pruned", hint="ask for a larger ratio or speedup")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(output) as tmp:
        shutil.copyfile(ctx.path(final), tmp)
    search, load, surgery = res["search"], res["load"], res["surgery"]
    rounds = plan.settings.benchmark.timing_rounds
    measured = None
    if rounds > 0:
        measured = measure_side_by_side(ctx, rounds=rounds, ui=ui)
    acc = res["recover"].get("accuracy") or {}
    notes = list(search.get("notes", []))
    if res["latency model"].get("source") == "analytic":
        notes.append("no latency table (--lut): predictions come from the analytic roofline model, expect them to miss; measure one with `hadmc-deploy lut`")
    if not (plan.settings.data.train or plan.settings.data.calib_source or plan.settings.data.eval):
        notes.append("no --train or --eval data: no BN recalibration or fine-tuning, and no accuracy measured")
    agreement = res["recover"].get("agreement") or {}
    if agreement.get("judged") and not agreement.get("passed") and acc.get("recovered") is None:
        notes.append(f"the pruned model is not shown to agree with the original on {agreement['source']} ({agreement['reason']}): a build would not "
                     "deploy it without --eval; give --train data, or more --epochs, to recover it")
    speedup = plan.settings.search.speedup
    if measured and speedup and measured["speedup"] < speedup:
        notes.append(
            f"measured speedup {measured['speedup']:.2f}x is below the requested {speedup:g}x (predicted {search['predicted_speedup']:.2f}x): "
            "the latency model is off for this plan; re-measure the table (`hadmc-deploy lut`) or ask for a little more"
        )
    summary = {
        "output": str(output),
        "checkpoint": str(output),
        "build_dir": str(plan.out_dir),
        "target": plan.target.name,
        "input_shape": list(plan.input_shape),
        "importance": plan.settings.search.importance,
        "round_to": plan_round_to(ctx),  # the step measured here where the table has one, as the search used
        "search": {k: v for k, v in search.items() if not k.startswith("_")},
        "predicted": {"baseline_ms": search.get("baseline_ms"), "pruned_ms": search.get("predicted_ms"), "speedup": search.get("predicted_speedup"), "source": search.get("latency_source")},
        "measured": measured,
        "speedup_agreement": measured["speedup"] / search["predicted_speedup"] if measured and search.get("predicted_speedup") else None,
        "params_before": load["params"], "params_after": surgery["params"],
        "macs_before": load["macs"], "macs_after": surgery["macs"],
        "params": {"original": load["params"], "pruned": surgery["params"]},
        "macs": {"original": load["macs"], "pruned": surgery["macs"]},
        "groups_total": res["trace"]["groups"], "groups_prunable": res["trace"]["prunable"],
        "groups_narrowed": sum(1 for g in search.get("groups", []) if g["after"] < g["before"]),
        "plan": {"keep": surgery["keep"]},
        "accuracy": {
            "data": plan.settings.data.eval,
            "original": acc.get("baseline"),
            "after_pruning": acc.get("pruned"),
            "after_bn_recalibration": acc.get("bn_recalibrated"),
            "after_recovery": acc.get("recovered"),
        },
        "recovery": {k: v for k, v in res["recover"].items() if not k.startswith("_")} if not res["recover"].get("_skipped") else None,
        "warnings": res["trace"].get("warnings", []),
        "notes": notes,
    }
    write_json_atomic(plan.out_dir / "summary.json", summary)
    write_text_atomic(plan.out_dir / "summary.md", summary_markdown(summary))
    summary["summary_json"] = str(plan.out_dir / "summary.json")
    summary["summary_md"] = str(plan.out_dir / "summary.md")
    print_summary(summary, ui)
    raise_if_budget_missed(res.get("latency check") or {}, output)
    return summary


def raise_if_budget_missed(check: dict[str, Any], output: Path) -> None:
    """The exit code follows the measurement, as in `build`: a latency budget that the build's
    own side-by-side check measured as missed (beyond its noise) exits 14, after the best
    measured checkpoint and its summary are written."""
    if not check.get("checked") or check.get("met"):
        return
    raise BudgetError(
        f"the budget of {check['goal_speedup']:.2f}x was not met when measured: the best plan measured {check['measured_speedup']:.2f}x "
        f"over the original ({check.get('precision')}, batch {check.get('batch')}, noise ±{100 * check.get('noise', 0):.0f}%); its checkpoint is {output}",
        hint="see summary.md; ask for less, raise --budget-rounds, or lower --min-keep-ratio",
        best_speedup=check["measured_speedup"],
    )
