"""`hadmc-deploy engine`: finish a TensorRT build on a GPU host from a build directory. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "finish a TensorRT build on a GPU host from a build directory (not implemented yet)"
DESCRIPTION = """Finish a TensorRT build on a GPU host from a build directory.

This command is not implemented yet (issue 7 (TensorRT backend)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy engine`", "issue 7 (TensorRT backend)")
