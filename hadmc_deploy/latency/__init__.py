"""Latency models: a LUT measured on the target's backend, or a labelled analytic fallback.

    model = load_latency_model(get_target("cpu"), "lut.json")
    pred = model.predict(graph.layer_specs(widths))   # Prediction(total_ms, per_layer_ms, source)
"""

from __future__ import annotations

from pathlib import Path

from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.analytic import AnalyticLatencyModel
from hadmc_deploy.latency.base import SOURCES, LatencyModel, Prediction
from hadmc_deploy.latency.lut import Correction, LatencyTable, LutEntry, LutMeta, check_compatible, read_table
from hadmc_deploy.latency.predictor import LutLatencyModel, fit_correction
from hadmc_deploy.targets import TargetProfile
from hadmc_deploy.ui import UI, quiet_ui

__all__ = [
    "SOURCES",
    "AnalyticLatencyModel",
    "Correction",
    "LatencyModel",
    "LatencyTable",
    "LutEntry",
    "LutLatencyModel",
    "LutMeta",
    "Prediction",
    "fit_correction",
    "load_latency_model",
    "predict_graph",
    "read_table",
]


def load_latency_model(
    target: TargetProfile,
    lut_path: str | Path | None = None,
    *,
    force: bool = False,
    ui: UI | None = None,
) -> LatencyModel:
    """The LUT model for `lut_path` (or the target's `lut_path`), else the analytic model.

    A table measured for another target, backend version or device raises
    `LatencyModelError` unless `force` (then a loud warning). Layers the table does
    not cover are priced analytically and the prediction says "lut+analytic".
    """
    ui = ui or quiet_ui()
    path = lut_path or target.lut_path
    if path is None:
        ui.log(f"no latency table for target {target.name!r}: using the analytic (roofline) model; measure one with `hadmc-deploy lut`")
        return AnalyticLatencyModel(target)
    from hadmc_deploy.latency.measure import backend_identity, get_backend

    table = read_table(path)
    version, device = backend_identity(get_backend(target.backend))
    check_compatible(table, str(path), target=target.name, backend=target.backend, backend_version=version, device=device, force=force, ui=ui)
    if table.meta.method.get("clock") == "cpu":
        ui.warn(f"latency table {path} holds single-thread CPU times (measured with --clock cpu): it ranks plans, but its milliseconds are not the deployment's multi-thread wall clock")
    return LutLatencyModel(table, AnalyticLatencyModel(target), source=str(path), ui=ui)


def predict_graph(model: LatencyModel, graph: DependencyGraph, widths: dict[str, int] | None = None) -> Prediction:
    """Predicted latency of `graph` at `widths` (group id -> kept channels; default: unpruned)."""
    return model.predict(graph.layer_specs(widths))
