"""`hadmc-deploy prune`: dependency graph -> importance -> surgery -> safe pruned checkpoint."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from rich.table import Table

from hadmc_deploy.commands.common import add_model_argument, input_shape_for, load_from_args
from hadmc_deploy.errors import GraphError, NotImplementedYetError, UsageError
from hadmc_deploy.graph.align import uniform_plan_keep
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.importance import CRITERIA
from hadmc_deploy.profile import human, profile_model
from hadmc_deploy.ui import UI

HELP = "prune a model by a channel ratio (or to a latency budget) and save a safe pruned checkpoint"
DESCRIPTION = """Trace MODEL's channel dependency graph, score channels, remove the least important
ones (physically: smaller tensors) and write a pruned checkpoint that every command accepts as MODEL.

Give one budget:
  --ratio R        remove R of the channels of every prunable group (0 < R < 1)
  --macs-ratio R   remove R of the MACs (a uniform channel ratio found by bisection)
  --speedup X / --latency-ms T   latency-driven search on --target (needs the search stage)

examples:
  hadmc-deploy prune model.pth --arch hadmc_deploy.models.demo:demo_cnn --input-shape 1,1,28,28 --ratio 0.5 -o pruned.pth
  hadmc-deploy prune model.pth --arch models.py:resnet18 --macs-ratio 0.4 --round-to 8 --ignore layer4.1.conv2 -o r18_p.pth
  hadmc-deploy prune model.pth --arch models.py:net --input-shape 1,1,28,28 --ratio 0.3 --importance taylor --data builtin:fashion-mnist:train -o p.pth"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    budget = parser.add_argument_group("budget (one of)")
    budget.add_argument("--ratio", type=float, help="fraction of channels to remove from every prunable group, in (0, 1)")
    budget.add_argument("--macs-ratio", type=float, help="fraction of MACs to remove, in (0, 1)")
    budget.add_argument("--speedup", type=float, help="latency-driven: be X times faster on --target")
    budget.add_argument("--latency-ms", type=float, help="latency-driven: at most T ms on --target")
    parser.add_argument("-o", "--output", metavar="OUT", help="pruned checkpoint to write (.pth)")
    parser.add_argument("--importance", choices=sorted(CRITERIA), default="l1", help="channel importance criterion (default l1)")
    parser.add_argument("--data", metavar="SOURCE", help="data for taylor/gradient importance (e.g. builtin:fashion-mnist:train)")
    parser.add_argument("--batches", type=int, default=4, help="batches of --data for taylor/gradient (default 4 x 32)")
    parser.add_argument("--round-to", type=int, default=None, help="kept channel counts are multiples of N where wide enough (default: the target's, else 1)")
    parser.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="NAME", help="modules (or parameters) to keep intact")
    search = parser.add_argument_group("latency-driven pruning (with --speedup / --latency-ms)")
    search.add_argument("--target", default=None, help="target profile (t4, cpu, ...; see `hadmc-deploy targets`)")
    search.add_argument("--search", choices=("knapsack", "greedy", "uniform", "amc", "ppo"), default="knapsack", help="width search method (default knapsack; amc/ppo are learned policies that need --eval)")
    search.add_argument("--lut", metavar="PATH", help="latency lookup table to use (default: the target's)")
    search.add_argument("--train", metavar="SOURCE", help="training data for recovery")
    search.add_argument("--eval", metavar="SOURCE", help="evaluation data")
    search.add_argument("--epochs", type=int, default=None, help="recovery epochs")
    search.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True, help="recover by distillation from the original (default on)")
    # added by the search engineer: --lr, --batch-size, --min-keep-ratio, --kd-*, --train-limit, ...
    try:
        from hadmc_deploy.commands.prune_search import add_budget_arguments
    except ImportError:  # the search stage is optional: ratio pruning works without it
        return
    add_budget_arguments(parser)


def _validate(args: argparse.Namespace) -> None:
    budgets = [name for name in ("ratio", "macs_ratio", "speedup", "latency_ms") if getattr(args, name) is not None]
    if len(budgets) != 1:
        raise UsageError("give exactly one of --ratio, --macs-ratio, --speedup, --latency-ms", hint="e.g. --ratio 0.5")
    for name in ("ratio", "macs_ratio"):
        value = getattr(args, name)
        if value is not None and not 0.0 < value < 1.0:
            raise UsageError(f"--{name.replace('_', '-')} {value} is outside (0, 1)", hint="e.g. 0.3 removes 30%")
    if args.speedup is not None and args.speedup <= 1.0:
        raise UsageError(f"--speedup {args.speedup} must be greater than 1")
    if args.latency_ms is not None and args.latency_ms <= 0:
        raise UsageError(f"--latency-ms {args.latency_ms} must be positive")
    if args.round_to is not None and args.round_to < 1:
        raise UsageError(f"--round-to {args.round_to} must be a positive integer")
    if args.output is None:
        raise UsageError("no output given", hint="pass -o pruned.pth")
    if args.importance in ("taylor", "gradient") and not args.data:
        raise UsageError(f"--importance {args.importance} needs --data SOURCE to compute gradients", hint="e.g. --data builtin:fashion-mnist:train")
    if Path(args.output).is_dir():
        raise UsageError(f"-o {args.output} is a directory", hint="pass a file name such as pruned.pth")


def _round_to(args: argparse.Namespace) -> int:
    if args.round_to is not None:
        return args.round_to
    if args.target:
        from hadmc_deploy.targets import get_target

        return get_target(args.target, getattr(args, "targets_file", None)).alignment()
    return 1


def _macs(graph: DependencyGraph, keep: dict[str, int]) -> int:
    return sum(spec.macs() for spec in graph.layer_specs(keep))


def keep_for_macs_ratio(graph: DependencyGraph, macs_ratio: float, round_to: int) -> dict[str, int]:
    """The uniform channel ratio whose (graph-predicted) MACs remove `macs_ratio` of the total."""
    base = _macs(graph, {})
    goal = base * (1.0 - macs_ratio)
    lo, hi = 0.0, 0.99
    best = uniform_plan_keep(graph, hi, round_to)
    for _ in range(30):
        mid = (lo + hi) / 2
        keep = uniform_plan_keep(graph, mid, round_to)
        if _macs(graph, keep) <= goal:
            best, hi = keep, mid
        else:
            lo = mid
    if _macs(graph, best) > goal:
        raise GraphError(f"--macs-ratio {macs_ratio} cannot be reached: the prunable groups hold too few of the MACs", hint="ask for a smaller ratio")
    return best


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from hadmc_deploy.graph.trace import trace

    _validate(args)
    loaded = load_from_args(args)
    shape = input_shape_for(args, loaded)
    graph = trace(loaded.model, shape, ignore=args.ignore, ui=ui)
    if not graph.prunable_groups:
        reasons = sorted({g.reason for g in graph.groups if g.reason})
        raise GraphError(f"nothing in this model can be pruned ({'; '.join(reasons[:3])})", hint="see `hadmc-deploy inspect` for the channel groups")
    if args.speedup is not None or args.latency_ms is not None:
        try:
            prune_search = importlib.import_module("hadmc_deploy.commands.prune_search")
        except ModuleNotFoundError as exc:
            raise NotImplementedYetError("latency-driven pruning (--speedup/--latency-ms) is not implemented yet (the search issue)") from exc
        return prune_search.run(args, ui, loaded, shape, graph)
    return prune_by_ratio(args, ui, loaded, shape, graph)


def prune_by_ratio(args: argparse.Namespace, ui: UI, loaded: Any, shape: tuple[int, ...], graph: DependencyGraph) -> dict[str, Any]:
    from hadmc_deploy.importance import score_groups
    from hadmc_deploy.pruned_checkpoint import save_pruned
    from hadmc_deploy.surgery import apply

    round_to = _round_to(args)
    data = None
    if args.importance in ("taylor", "gradient"):
        from hadmc_deploy.data import Preprocess, check_matches_model, load_data

        data = load_data(args.data, Preprocess(resize=(shape[2], shape[3]), channels=shape[1]), limit=args.batches * 32)
        check_matches_model(data, shape)
    ui.log(f"scoring channels ({args.importance})")
    scores = score_groups(loaded.model, graph, args.importance, data, batches=args.batches, ui=ui)
    if args.ratio is not None:
        keep = uniform_plan_keep(graph, args.ratio, round_to)
    else:
        keep = keep_for_macs_ratio(graph, args.macs_ratio, round_to)
    plan = WidthPlan(keep=keep, meta={"ratio": args.ratio, "macs_ratio": args.macs_ratio, "importance": args.importance, "round_to": round_to})
    pruned, filled = apply(loaded.model, graph, plan, scores=scores)
    before = profile_model(loaded.model, shape)
    try:
        after = profile_model(pruned, shape)
    except Exception as exc:  # a wrong graph must never be saved
        raise GraphError(f"the pruned model does not run ({type(exc).__name__}: {str(exc).splitlines()[0]})", hint="report this model; pass --ignore for the layers involved meanwhile") from exc
    if after.output_shape != before.output_shape:
        raise GraphError(f"pruning changed the output shape {before.output_shape} -> {after.output_shape}")
    save_pruned(args.output, pruned, loaded, filled, shape, extra={"importance": args.importance})
    changed = {gid: (graph.group(gid).width, k) for gid, k in filled.keep.items() if k < graph.group(gid).width}
    table = Table(title=f"pruned {loaded.source}")
    for col in ("", "params", "MACs"):
        table.add_column(col, justify="right")
    table.add_row("before", human(before.params), human(before.macs))
    table.add_row("after", human(after.params), human(after.macs))
    table.add_row("kept", f"{after.params / before.params:.1%}", f"{after.macs / max(before.macs, 1):.1%}")
    ui.out.print(table)
    ui.out.print(f"{len(changed)} of {len(graph.groups)} channel groups narrowed; wrote {args.output}")
    return {
        "output": str(args.output),
        "input_shape": list(shape),
        "importance": args.importance,
        "round_to": round_to,
        "params_before": before.params,
        "params_after": after.params,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "groups_total": len(graph.groups),
        "groups_prunable": len(graph.prunable_groups),
        "groups_narrowed": len(changed),
        "plan": {"keep": filled.keep},
        "warnings": graph.warnings,
    }
