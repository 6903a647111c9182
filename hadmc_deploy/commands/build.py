"""`hadmc-deploy build`: compile a model for a target: prune, recover, export, quantize, build, report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hadmc_deploy.build.pipeline import build
from hadmc_deploy.commands.common import add_model_argument, input_shape_for, load_from_args, parse_shape
from hadmc_deploy.config import add_build_arguments, load_config, merge_options
from hadmc_deploy.errors import UsageError
from hadmc_deploy.ui import UI

HELP = "compile a model for a target: prune, recover, export, quantize, build, report"
DESCRIPTION = """Compile a model for a target in one resumable pipeline:
load -> trace -> latency model -> search -> surgery -> recover -> export + verify ->
calibrate -> quantize -> backend build -> evaluate -> report.

Every stage writes into the build directory (--out, default build/<model>-<target>/) with a
manifest keyed by the SHA-256 of its inputs: a rebuild with unchanged inputs reuses every stage,
and a changed option reruns only the stages downstream of it (--no-cache reruns all).
`--resume DIR` continues the build in DIR with the options it recorded in DIR/plan.json.
Options can come from a TOML file (--config build.toml, keys named like the options);
command-line options override it.

examples:
  hadmc-deploy build demo.pth --target cpu --speedup 2 --train builtin:fashion-mnist:train \\
      --eval builtin:fashion-mnist:test --train-limit 6000 --epochs 1
  hadmc-deploy build demo.pth --target cpu --speedup 2 --calib builtin:fashion-mnist:train --dry-run
  hadmc-deploy build model.pth --arch models.py:net --target t4 --config build.toml
  hadmc-deploy build --resume build/demo-t4              # e.g. on the T4 host"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    add_build_arguments(parser)
    parser.add_argument("--config", metavar="TOML", help="options from a TOML file (or a build's plan.json); command-line options override it")
    parser.add_argument("--resume", metavar="DIR", help="continue the build in DIR with the options recorded in DIR/plan.json")
    parser.add_argument("--dry-run", action="store_true", help="print the stages, predicted latency and speedup and the layers to narrow, then stop")


def plan_from_args(args: argparse.Namespace, *, deploy: bool = True) -> Any:
    """Merge defaults < --resume's plan.json < --config < the command line into a BuildPlan."""
    from hadmc_deploy.loading import parse_arch_kwargs
    from hadmc_deploy.plan import make_plan, read_plan_file
    from hadmc_deploy.targets import get_target

    layers: dict[str, Any] = {}
    recorded: dict[str, Any] = {}
    if args.resume:
        recorded = read_plan_file(args.resume)
        layers.update({k: v for k, v in recorded["options"].items() if v is not None})
        layers["out"] = args.resume
    if args.config:
        layers.update(load_config(args.config))
    cli = {k: getattr(args, k) for k in vars(args)}
    options = merge_options(cli, {k: v for k, v in layers.items() if k not in ("model", "arch", "arch_kwargs", "input_shape", "trust_model", "targets_file")})
    model = args.model or layers.get("model") or recorded.get("model")
    arch = args.arch or layers.get("arch") or recorded.get("arch")
    arch_kwargs = parse_arch_kwargs(args.arch_kwargs) if args.arch_kwargs else (layers.get("arch_kwargs") or recorded.get("arch_kwargs") or {})
    trust = bool(args.trust_model or recorded.get("trust_model"))
    targets_file = args.targets_file or layers.get("targets_file") or recorded.get("targets_file")
    if model is None and arch is None:
        raise UsageError("no model given", hint="pass MODEL (and --arch for a state_dict), or --resume DIR")
    shape = parse_shape(args.input_shape)
    if shape is None and (layers.get("input_shape") or recorded.get("input_shape")):
        shape = tuple(int(d) for d in (layers.get("input_shape") or recorded["input_shape"]))
    if shape is None:
        # The checkpoint may record its input shape; loading it here is cheap next to the build.
        probe = argparse.Namespace(model=model, arch=arch, arch_kwargs=json.dumps(arch_kwargs) if arch_kwargs else None, trust_model=trust, input_shape=None)
        shape = input_shape_for(probe, load_from_args(probe))
    target = get_target(options["target"], targets_file)
    return make_plan(model=model, arch=arch, arch_kwargs=arch_kwargs, input_shape=shape, trust_model=trust, target=target, options=options, targets_file=targets_file, dry_run=args.dry_run, deploy=deploy)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    plan = plan_from_args(args)
    report = build(plan, ui)
    if plan.dry_run:
        return report
    return {
        "build_dir": str(plan.out_dir),
        "report": str(plan.out_dir / "report.json"),
        "stages": report["stages"],
        "variants": report["variants"],
        "accuracy": report["accuracy"],
        "fallback_message": report["backend"].get("fallback_message"),
    }
