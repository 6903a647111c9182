"""The build's accuracy metric, by task: top-1 accuracy for classifiers, mAP@0.5:0.95 (COCO
101-point, in points) for detectors. Every stage that measures accuracy goes through here, so
the guard, the decision and the report compare like with like whatever the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.detection.dataset import DetectionDataset, is_detection_source
from hadmc_deploy.detection.evaluate import artifact_map, onnx_map, torch_map
from hadmc_deploy.evaluate import artifact_accuracy, onnx_accuracy, torch_accuracy
from hadmc_deploy.ui import UI

CLASSIFY, DETECT = "classify", "detect"
METRIC_NAMES = {CLASSIFY: "top-1 accuracy (%)", DETECT: "mAP@0.5:0.95 (COCO 101-point, points)"}


def infer_task(explicit: str | None, sources: list[str | None]) -> str:
    """--task, else detection when any data source is a detection set (YOLO format)."""
    if explicit:
        return explicit
    return DETECT if any(s and is_detection_source(s) for s in sources) else CLASSIFY


def _detail(result: Any) -> dict[str, Any]:
    d = result.to_dict()
    return {"map50": d.get("map50"), "map50_95": d.get("map50_95"), "per_class_ap50": d.get("per_class_ap50"), "images": d.get("num_images")}


def torch_score(model: Any, data: ArrayDataset, ui: UI | None = None) -> tuple[float, dict[str, Any] | None]:
    """(score in points, detection detail or None)."""
    if isinstance(data, DetectionDataset):
        result = torch_map(model, data, ui=ui)
        return result.map50_95, _detail(result)
    return torch_accuracy(model, data), None


def onnx_score(path: str | Path, data: ArrayDataset, ui: UI | None = None) -> tuple[float, dict[str, Any] | None]:
    if isinstance(data, DetectionDataset):
        result = onnx_map(path, data, ui=ui)
        return result.map50_95, _detail(result)
    return onnx_accuracy(path, data, ui=ui), None


def artifact_score(backend: Any, artifact: Any, data: ArrayDataset, ui: UI | None = None, confusion: Any = None) -> tuple[float, dict[str, Any] | None]:
    """The artifact's metric on `data`; for a classifier, its (label, top-1) counts go into `confusion` when given."""
    if isinstance(data, DetectionDataset):
        result = artifact_map(backend, artifact, data, ui=ui)
        return result.map50_95, _detail(result)
    return artifact_accuracy(backend, artifact, data, ui=ui, confusion=confusion), None
