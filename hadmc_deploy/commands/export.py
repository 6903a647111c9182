"""`hadmc-deploy export`: export a model to verified ONNX. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "export a model to verified ONNX (not implemented yet)"
DESCRIPTION = """Export a model to verified ONNX.

This command is not implemented yet (issue 6 (export)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy export`", "issue 6 (export)")
