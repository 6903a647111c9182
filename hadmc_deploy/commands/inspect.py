"""`hadmc-deploy inspect`: what a model is, before anything is changed."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from hadmc_deploy.commands.common import add_model_argument, input_shape_for, load_from_args
from hadmc_deploy.errors import GraphError
from hadmc_deploy.profile import human, profile_model
from hadmc_deploy.ui import UI

HELP = "summarise a model: modules, parameters, MACs, prunable channel groups"
DESCRIPTION = """Load MODEL the way every command does and print its module tree summary, parameter
count and MACs at --input-shape, and the channel groups the pruner would see.

With --target (and --lut), also the predicted latency of every layer on that target and the
groups where removing channels buys the most time per channel.

examples:
  hadmc-deploy inspect model.pth --arch mymodels.py:resnet18 --arch-kwargs '{"num_classes": 10}'
  hadmc-deploy inspect --arch hadmc_deploy.models.resnet:resnet18 --input-shape 1,3,224,224 --json
  hadmc-deploy inspect build/demo/demo.pth --target cpu --lut lut.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    parser.add_argument("--depth", type=int, default=2, help="module tree depth to print (default 2)")
    parser.add_argument("--ignore", nargs="+", metavar="NAME", default=(), help="modules to keep intact (their groups show as not prunable)")
    parser.add_argument("--target", help="also predict per-layer latency on this target (see `hadmc-deploy targets`)")
    parser.add_argument("--lut", help="latency table measured with `hadmc-deploy lut` (default: the analytic model, labelled so)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="precision to predict for (default: the LUT's, else the target's)")
    parser.add_argument("--force", action="store_true", help="use a LUT measured on another device or backend version anyway")


def _module_rows(model, depth: int) -> list[tuple[str, str, int]]:  # noqa: ANN001
    rows = []
    for name, module in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if 0 < level <= depth:
            params = sum(p.numel() for p in module.parameters())
            rows.append((name, type(module).__name__, params))
    return rows


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    loaded = load_from_args(args)
    shape = input_shape_for(args, loaded)
    try:
        prof = profile_model(loaded.model, shape)
    except Exception as exc:
        raise GraphError(f"the model fails on an input of shape {shape}: {type(exc).__name__}: {exc}", hint="pass the right --input-shape N,C,H,W") from exc
    table = Table(title=f"{loaded.source}  ({loaded.kind})")
    table.add_column("module")
    table.add_column("type")
    table.add_column("params", justify="right")
    rows = _module_rows(loaded.model, args.depth)
    for name, kind, params in rows:
        table.add_row(name, kind, human(params))
    ui.out.print(table)
    ui.out.print(f"input {shape} -> output {prof.output_shape}; params {prof.params:,} ({human(prof.params)}); MACs {prof.macs:,} ({human(prof.macs)})")
    result: dict[str, Any] = {
        "source": loaded.source,
        "kind": loaded.kind,
        "input_shape": list(shape),
        "output_shape": list(prof.output_shape),
        "params": prof.params,
        "macs": prof.macs,
        "modules": [{"name": n, "type": t, "params": p} for n, t, p in rows],
    }
    from hadmc_deploy.commands.inspect_groups import describe_groups
    from hadmc_deploy.graph.trace import trace

    graph = trace(loaded.model, shape, ignore=args.ignore or (), ui=ui)
    result.update(describe_groups(loaded, shape, args, ui, graph=graph))
    if args.target or args.lut:
        from hadmc_deploy.commands.inspect_latency import describe_latency

        result.update(describe_latency(loaded, shape, graph, args, ui))
    return result
