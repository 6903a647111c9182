"""`hadmc-deploy targets`: the hardware profiles and whether their backend is usable here."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from hadmc_deploy.backends import available_backends
from hadmc_deploy.targets import all_targets
from hadmc_deploy.ui import UI

HELP = "list hardware target profiles"
DESCRIPTION = """List the target profiles (built-in and from --targets-file): backend, precisions, channel
alignment, batch sizes, the INT8 form, datasheet numbers for the analytic latency model, and whether
the backend is available on this machine.

example:
  hadmc-deploy targets
  hadmc-deploy targets --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    targets = all_targets(args.targets_file)
    backends = available_backends()
    table = Table(title="hadmc-deploy targets")
    for col in ("target", "backend", "available", "precisions", "round_to", "INT8 form", "batches", "datasheet"):
        table.add_column(col)
    out = {}
    for name, t in targets.items():
        ok, reason = backends.get(t.backend, (False, "unknown backend"))
        sheet = ", ".join(f"{p} {v:g} TFLOPS" for p, v in t.datasheet.peak_tflops.items()) + f", {t.datasheet.memory_gbps:g} GB/s"
        table.add_row(
            name,
            t.backend,
            ("yes " if ok else "no: ") + reason,
            ",".join(t.precisions),
            ",".join(f"{p}:{n}" for p, n in t.round_to.items()),
            t.int8_form + (f" ({t.isa})" if t.isa else ""),
            ",".join(map(str, t.batch_sizes)),
            sheet,
        )
        out[name] = {**t.to_dict(), "backend_available": ok, "backend_status": reason}
    ui.out.print(table)
    return {"targets": out}
