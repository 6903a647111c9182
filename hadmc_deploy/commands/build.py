"""`hadmc-deploy build`: compile a model for a target: prune, recover, export, quantize, build, report. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "compile a model for a target: prune, recover, export, quantize, build, report (not implemented yet)"
DESCRIPTION = """Compile a model for a target: prune, recover, export, quantize, build, report.

This command is not implemented yet (issue 8 (pipeline)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy build`", "issue 8 (pipeline)")
