"""The build pipeline: load -> trace -> latency model -> search -> surgery -> recover ->
export -> calibrate -> quantize -> backend build -> evaluate -> report.

Skeleton: stages that are not built yet are reported as such, never faked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from hadmc_deploy.loading import load_model
from hadmc_deploy.profile import human, profile_model
from hadmc_deploy.ui import UI

STAGES = ("load", "trace", "latency model", "search", "surgery", "recover", "export", "calibrate", "quantize", "backend build", "evaluate", "report")


def demo_build(checkpoint: Path, record: dict[str, Any], *, target: str, speedup: float, out_dir: Path, ui: UI, input_shape: tuple[int, ...]) -> dict[str, Any]:
    loaded = load_model(checkpoint)
    prof = profile_model(loaded.model, input_shape)
    status = {stage: "not built yet" for stage in STAGES}
    status["load"] = f"done: {loaded.kind} via {loaded.arch}, {human(prof.params)} params, {human(prof.macs)} MACs"
    table = Table(title=f"hadmc-deploy build {checkpoint} --target {target} --speedup {speedup:g}")
    table.add_column("stage")
    table.add_column("status")
    for stage in STAGES:
        table.add_row(stage, status[stage])
    ui.out.print(table)
    ui.out.print(f"demo model: test accuracy {record['accuracy']:.2f}% on {record['eval_data']}")
    return {"stages": status, "params": prof.params, "macs": prof.macs}
