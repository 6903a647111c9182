"""`hadmc-deploy lut`: measure a latency lookup table on a target's backend. Not built yet: exits with a clear error."""

from __future__ import annotations

import argparse
from typing import Any

from hadmc_deploy.commands.common import not_built
from hadmc_deploy.ui import UI

HELP = "measure a latency lookup table on a target's backend (not implemented yet)"
DESCRIPTION = """Measure a latency lookup table on a target's backend.

This command is not implemented yet (issue 4 (latency model)); it exits non-zero rather than fake a result."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    return not_built("`hadmc-deploy lut`", "issue 4 (latency model)")
