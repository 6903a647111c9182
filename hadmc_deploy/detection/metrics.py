"""mAP@0.5 and mAP@0.5:0.95, computed the way pycocotools' COCOeval does (bbox, area "all").

Per (image, class): detections sorted by score, the top `max_detections` kept, each matched
greedily to the unmatched ground truth of highest IoU at or above the threshold. Per class:
every image's detections pooled and sorted by score (stable), precision made monotone,
sampled at 101 recall points; classes without ground truth are left out of the mean.

Written here (about 80 lines) instead of depending on pycocotools: it needs a C build and
COCO-JSON round trips for every evaluation; tests/test_detection_metrics.py checks this
against hand-computed cases and against pycocotools itself when it is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from hadmc_deploy.detection.decode import Detections, box_iou

COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class MapResult:
    """mAP in percent, and per-class AP (percent, NaN where a class has no ground truth)."""

    map50: float
    map50_95: float
    per_class_ap50: list[float] = field(default_factory=list)
    per_class_ap50_95: list[float] = field(default_factory=list)
    num_images: int = 0
    num_objects: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["per_class_ap50"] = [None if np.isnan(v) else v for v in self.per_class_ap50]
        data["per_class_ap50_95"] = [None if np.isnan(v) else v for v in self.per_class_ap50_95]
        return data


def _match_image(det_boxes: np.ndarray, gt_boxes: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T, k) bool: whether each detection (score order) is a true positive at each threshold."""
    hits = np.zeros((len(thresholds), len(det_boxes)), bool)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return hits
    ious = box_iou(det_boxes, gt_boxes)
    for t, thr in enumerate(thresholds):
        taken = np.zeros(len(gt_boxes), bool)
        for d in range(len(det_boxes)):
            candidate = np.where(~taken & (ious[d] >= min(thr, 1 - 1e-10)), ious[d], -1.0)
            if candidate.max() < 0:
                continue
            best = len(candidate) - 1 - int(np.argmax(candidate[::-1]))  # the last of equal IoUs, as COCOeval
            taken[best] = True
            hits[t, d] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> float:
    """101-point interpolated AP (0..1) of pooled detections; `hits` is one row of `_match_image`."""
    if num_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.zeros(len(RECALL_POINTS))
    reached = idx < len(precision)
    sampled[reached] = precision[idx[reached]]
    return float(np.mean(sampled))


def mean_average_precision(
    predictions: Sequence[Detections],
    ground_truth: Sequence[np.ndarray],
    num_classes: int,
    *,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> MapResult:
    """mAP of `predictions` against `ground_truth` ((k,5) rows `cls x1 y1 x2 y2` per image)."""
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} images")
    thresholds = np.asarray(iou_thresholds, np.float64)
    ap = np.full((num_classes, len(thresholds)), np.nan)
    for c in range(num_classes):
        scores, hits, num_gt = [], [], 0
        for det, gt in zip(predictions, ground_truth, strict=True):
            gt_boxes = gt[gt[:, 0] == c, 1:5]
            num_gt += len(gt_boxes)
            mine = np.nonzero(det.classes == c)[0]
            mine = mine[np.argsort(-det.scores[mine], kind="mergesort")][:max_detections]
            scores.append(det.scores[mine])
            hits.append(_match_image(det.boxes[mine], gt_boxes, thresholds))
        all_scores = np.concatenate(scores) if scores else np.zeros(0)
        all_hits = np.concatenate(hits, axis=1) if hits else np.zeros((len(thresholds), 0), bool)
        for t in range(len(thresholds)):
            ap[c, t] = average_precision(all_scores, all_hits[t], num_gt)
    present = ~np.isnan(ap[:, 0])
    at50 = int(np.argmin(np.abs(thresholds - 0.5)))
    map50 = float(np.mean(ap[present, at50])) * 100 if present.any() and abs(thresholds[at50] - 0.5) < 1e-9 else float("nan")
    map_all = float(np.mean(ap[present])) * 100 if present.any() else float("nan")
    return MapResult(
        map50=map50,
        map50_95=map_all,
        per_class_ap50=(ap[:, at50] * 100).tolist(),
        per_class_ap50_95=(np.mean(ap, axis=1) * 100).tolist(),
        num_images=len(predictions),
        num_objects=int(sum(len(g) for g in ground_truth)),
    )
