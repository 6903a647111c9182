"""`hadmc-deploy diff`: compare two checkpoints or build directories layer by layer. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "compare two checkpoints or build directories layer by layer (not implemented yet)"
DESCRIPTION = """Compare two checkpoints or build directories layer by layer.

This command is not implemented yet (issue 8 (build cache)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy diff`", "issue 8 (build cache)")
