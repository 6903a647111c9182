"""The cache of measured tables: one per graph, machine, backend version, precision, batch and
clock, reused by every later build and measured again once when its measurements spread wide.

Why measured again: a table measured while other jobs ran shows it (its measurement spread,
latency/stated_spread.py),
and reused as it is, its misses would follow every build of that model on this machine; one more
table, the steadier of the two kept, costs one table's time once (the kept table is marked, so a
machine that stays busy does not pay it in every build).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.analytic import AnalyticLatencyModel
from hadmc_deploy.latency.auto import MeasureOptions, cache_key, measure_table
from hadmc_deploy.latency.lut import LatencyTable, read_table
from hadmc_deploy.latency.measure import backend_identity, get_backend
from hadmc_deploy.latency.predictor import LutLatencyModel
from hadmc_deploy.latency.stated_spread import STEADY_SPREAD, measurement_spread
from hadmc_deploy.targets import TargetProfile
from hadmc_deploy.ui import UI, quiet_ui

#: the method key marking a cached table kept after it was measured again
MEASURED_AGAIN = "measured_again"


def cache_path(graph: DependencyGraph, target: TargetProfile, precision: str, batch: int, cache_dir: str | Path, clock: str = "wall") -> tuple[Path, str] | None:
    """(file, key) of the table cached for this graph, machine, backend version, precision, batch and
    clock (None: the target's backend is not on this machine)."""
    version, device = backend_identity(get_backend(target.backend))
    if version is None or device is None:
        return None
    key = cache_key(graph, target, precision, batch, version, device, clock)
    return Path(cache_dir) / f"lut-{precision}-b{batch}-{key}.json", key


def cached_table(graph: DependencyGraph, target: TargetProfile, precision: str, batch: int, cache_dir: str | Path, clock: str = "wall") -> Path | None:
    """The complete table `measured_latency_model` cached for this graph, machine, backend version,
    precision and batch (None when there is none, or the backend is not here): free to reuse."""
    found = cache_path(graph, target, precision, batch, cache_dir, clock)
    if found is None or not found[0].exists():
        return None
    path = found[0]
    try:
        return path if read_table(path).meta.method.get("complete") else None
    except LatencyModelError:
        return None


def measured_latency_model(
    graph: DependencyGraph,
    model: nn.Module,
    input_shape: tuple[int, ...],
    target: TargetProfile,
    precision: str,
    batch: int,
    cache_dir: str | Path,
    *,
    budget_s: float | None = 60.0,
    options: MeasureOptions | None = None,
    baseline_onnx: Path | Callable[[], Path | None] | None = None,
    ui: UI | None = None,
) -> tuple[LutLatencyModel, dict[str, Any]]:
    """The measured model of `graph` on this machine: from `cache_dir` when a complete table for the
    same graph, machine, backend version, precision and batch is there, else measured now (and cached).

    info: {"cached": bool, "lut": path, "key": ..., "seconds": ..., "step": ..., ...}. A budget-limited
    (incomplete) table still predicts (uncovered points extrapolate, labelled) and is resumed next time.
    """
    ui = ui or quiet_ui()
    found = cache_path(graph, target, precision, batch, cache_dir, (options or MeasureOptions()).clock)
    if found is None:
        raise LatencyModelError(f"{target.backend} is not available on this machine", hint="install onnxruntime, or pass --lut")
    path, key = found
    path.parent.mkdir(parents=True, exist_ok=True)
    moved = path.with_name(path.stem + ".earlier.json")
    earlier = moved if moved.exists() else None  # a measuring again that was cut short: resumed below, then compared
    if path.exists() and earlier is None:
        table = read_table(path)
        spread = measurement_spread(table)
        if table.meta.method.get("complete"):
            if spread is None or spread <= STEADY_SPREAD or table.meta.method.get(MEASURED_AGAIN):
                ui.log(f"latency table from cache: {path}")
                return LutLatencyModel(table, AnalyticLatencyModel(target), source=str(path), ui=ui), {"cached": True, "lut": str(path), "key": key, "seconds": 0.0}
            ui.log(f"the cached table's measurements spread +-{spread:.1%} (the machine was busy): measuring it once more, the steadier kept")
            earlier = moved
            path.replace(earlier)
    ui.log(f"measuring a {precision} batch-{batch} latency table on this machine (cached as {path})")
    table, info = measure_table(model, graph, input_shape, target, precision, batch, path, budget_s=budget_s, options=options, baseline_onnx=baseline_onnx, ui=ui)
    info.update({"cached": False, "key": key})
    if earlier is not None:
        table = keep_steadier(path, earlier, table, info)
    return LutLatencyModel(table, AnalyticLatencyModel(target), source=str(path), ui=ui), info


def keep_steadier(path: Path, earlier: Path, table: LatencyTable, info: dict[str, Any]) -> LatencyTable:
    """Of the table just measured at `path` and the cached one moved to `earlier`, the one whose
    measurements spread less, left at `path` and marked measured again (a new table stopped by the budget,
    or stating none, loses to the complete earlier one); `info["measured_again"]` says which."""
    before = read_table(earlier)
    old, new = measurement_spread(before), measurement_spread(table)
    keep_new = bool(table.meta.method.get("complete")) and new is not None and (old is None or new < old)
    kept = table if keep_new else before
    kept.meta.method[MEASURED_AGAIN] = True
    kept.save(path)
    earlier.unlink()
    info[MEASURED_AGAIN] = {"earlier_spread": old, "new_spread": new, "kept": "new" if keep_new else "earlier"}
    return kept
