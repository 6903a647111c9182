"""`hadmc-deploy prune`: prune a model: dependency graph, importance, surgery. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "prune a model: dependency graph, importance, surgery (not implemented yet)"
DESCRIPTION = """Prune a model: dependency graph, importance, surgery.

This command is not implemented yet (issue 3 (graph and surgery)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy prune`", "issue 3 (graph and surgery)")
