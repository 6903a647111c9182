"""`hadmc-deploy bench`: benchmark an artifact through its backend. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "benchmark an artifact through its backend (not implemented yet)"
DESCRIPTION = """Benchmark an artifact through its backend.

This command is not implemented yet (issue 6 (ONNX Runtime backend)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy bench`", "issue 6 (ONNX Runtime backend)")
