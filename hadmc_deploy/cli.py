"""`hadmc-deploy`: the command line.

Each subcommand lives in `hadmc_deploy/commands/<name>.py` and exposes `HELP`,
`DESCRIPTION`, `add_arguments(parser)` and `run(args, ui) -> dict`. This module
only parses, dispatches, prints the result (`--json`: one JSON object on
stdout, nothing else there) and turns `HadmcError`s into one line and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from hadmc_deploy import __version__
from hadmc_deploy.errors import HadmcError, UsageError
from hadmc_deploy.ui import UI

#: subcommand name -> module under hadmc_deploy.commands (a registry, not an if-chain).
COMMANDS = {
    "build": "build",
    "prune": "prune",
    "export": "export",
    "lut": "lut",
    "bench": "bench",
    "inspect": "inspect",
    "targets": "targets",
    "engine": "engine",
    "diff": "diff",
    "demo": "demo",
}

EPILOG = """examples:
  hadmc-deploy demo                                   train the Fashion-MNIST demo model and build it for this CPU
  hadmc-deploy inspect model.pth --arch models.py:net --input-shape 1,3,224,224
  hadmc-deploy build model.pth --arch models.py:net --target cpu --speedup 2 --calib builtin:fashion-mnist:train
  hadmc-deploy targets

Run `hadmc-deploy COMMAND --help` for each command's options."""


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (placed after the subcommand name)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--arch", metavar="SPEC", help="architecture: package.module:callable, path/file.py:callable, torchvision:NAME or timm:NAME")
    group.add_argument("--arch-kwargs", metavar="JSON", help='keyword arguments for the architecture callable, e.g. \'{"num_classes": 10}\'')
    group.add_argument("--input-shape", metavar="N,C,H,W", default=None, help="example input shape (default 1,3,224,224, or what the checkpoint records)")
    group.add_argument("--trust-model", action="store_true", help="allow loading a fully pickled nn.Module (this runs code from the file: only for files you trust)")
    group.add_argument("--targets-file", metavar="TOML", help="extra target profiles ([targets.NAME] tables); also $HADMC_TARGETS")
    group.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there; logs go to stderr")
    group.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines (warnings and errors still print)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hadmc-deploy",
        description="Hardware-aware deployment compiler for PyTorch CNNs: prunes against a latency table measured on "
        "the target, recovers accuracy by distillation, calibrates INT8 on real data and builds a TensorRT engine or "
        "an ONNX Runtime model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hadmc-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"hadmc_deploy.commands.{module_name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


#: exit code of a file-system failure (sysexits' EX_IOERR).
OS_ERROR_EXIT = 74


def check_output_location(path: str, flag: str) -> None:
    """Fail before any work when an output path can never be written: its nearest existing
    ancestor must be a writable folder (nothing is created here)."""
    target = Path(path).absolute()
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{flag} {path}: {ancestor} is a file, so the folder cannot be created", hint="choose an output path inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: the folder {ancestor} is not writable", hint="choose an output path you can write to")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    ui = UI(quiet=args.quiet, debug=args.debug)
    if args.json:
        # Human-readable output goes to stderr so stdout holds only the JSON object.
        ui.out = Console(stderr=True, highlight=False)
    try:
        for flag, attr in (("-o", "output"), ("--out", "out")):
            if isinstance(getattr(args, attr, None), str):
                check_output_location(getattr(args, attr), flag)
        result = args._module.run(args, ui)
    except HadmcError as exc:
        if args.debug:
            raise
        print(f"hadmc-deploy {args.command}: error: {exc.one_line()}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": exc.one_line(), "error_type": type(exc).__name__, "exit_code": exc.exit_code}))
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hadmc-deploy {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused (disk full, permissions): not a bug of ours
        if args.debug:
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"hadmc-deploy {args.command}: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return OS_ERROR_EXIT
    except Exception as exc:  # an internal bug: one line, and how to see the traceback
        if args.debug:
            raise
        print(
            f"hadmc-deploy {args.command}: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 70
    if args.json:
        print(json.dumps({"ok": True, **(result or {})}, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
