"""mAP: hand-computed cases, and agreement with pycocotools' COCOeval where it is installed."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from hadmc_deploy.detection.decode import Detections, box_iou, nms
from hadmc_deploy.detection.metrics import average_precision, mean_average_precision


def det(rows: list[tuple[int, float, float, float, float, float]]) -> Detections:
    """rows: (cls, score, x1, y1, x2, y2)."""
    if not rows:
        return Detections.empty()
    arr = np.asarray(rows, np.float64)
    return Detections(arr[:, 2:6].astype(np.float32), arr[:, 1].astype(np.float32), arr[:, 0].astype(np.int64))


def gt(rows: list[tuple[int, float, float, float, float]]) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 5)


def test_perfect_detections_score_100() -> None:
    truth = [gt([(0, 10, 10, 30, 30), (1, 40, 40, 60, 70)]), gt([(0, 5, 5, 25, 15)])]
    preds = [det([(0, 0.9, 10, 10, 30, 30), (1, 0.8, 40, 40, 60, 70)]), det([(0, 0.7, 5, 5, 25, 15)])]
    result = mean_average_precision(preds, truth, num_classes=2)
    assert result.map50 == pytest.approx(100.0)
    assert result.map50_95 == pytest.approx(100.0)
    assert result.num_objects == 3


def test_hand_computed_precision_recall_curve() -> None:
    # One class, two objects; three detections in score order: TP, FP, TP.
    # Precision after each: 1, 1/2, 2/3; recall 1/2, 1/2, 1. The envelope is 1 up to recall 0.5
    # (51 of the 101 recall points: 0.00..0.50) and 2/3 from 0.51 to 1.00 (50 points).
    truth = [gt([(0, 0, 0, 10, 10), (0, 50, 50, 60, 60)])]
    preds = [det([(0, 0.9, 0, 0, 10, 10), (0, 0.8, 20, 20, 30, 30), (0, 0.7, 50, 50, 60, 60)])]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101 * 100
    assert mean_average_precision(preds, truth, 1).map50 == pytest.approx(expected)


def test_iou_threshold_decides_a_match() -> None:
    # A box shifted so IoU = 0.6: a hit at 0.5 and 0.55 and 0.6 (IoU >= threshold), a miss above.
    truth = [gt([(0, 0, 0, 10, 10)])]
    shifted = [det([(0, 0.9, 2.5, 0, 12.5, 10)])]  # inter 75, union 125
    assert box_iou(shifted[0].boxes, truth[0][:, 1:])[0, 0] == pytest.approx(0.6)
    result = mean_average_precision(shifted, truth, 1)
    assert result.map50 == pytest.approx(100.0)
    assert result.map50_95 == pytest.approx(300.0 / 10)  # thresholds 0.50, 0.55, 0.60 hit


def test_duplicates_and_wrong_class_are_false_positives() -> None:
    truth = [gt([(0, 0, 0, 10, 10)])]
    dup = [det([(0, 0.9, 0, 0, 10, 10), (0, 0.95, 0, 0, 10, 10)])]
    assert mean_average_precision(dup, truth, 1).map50 == pytest.approx(100.0)  # the first is TP, precision 1 up to recall 1
    dup_first = [det([(0, 0.95, 30, 30, 40, 40), (0, 0.9, 0, 0, 10, 10)])]  # an FP outranks the TP
    assert mean_average_precision(dup_first, truth, 1).map50 == pytest.approx(50.0)
    wrong = [det([(1, 0.9, 0, 0, 10, 10)])]
    result = mean_average_precision(wrong, truth, 2)
    assert result.map50 == pytest.approx(0.0)
    assert np.isnan(result.per_class_ap50[1])  # class 1 has no ground truth: left out of the mean


def test_average_precision_with_no_detections_is_zero() -> None:
    assert average_precision(np.zeros(0), np.zeros(0, bool), num_gt=3) == 0.0


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, limit=1).tolist() == [1]


def _random_case(rng: np.random.Generator, images: int, classes: int) -> tuple[list[Detections], list[np.ndarray]]:
    truths, preds = [], []
    for _ in range(images):
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (k, 2))
        wh = rng.uniform(5, 40, (k, 2))
        truths.append(np.concatenate([rng.integers(0, classes, (k, 1)), xy, xy + wh], 1).astype(np.float32))
        rows = []
        for c, x1, y1, x2, y2 in truths[-1]:
            if rng.random() < 0.8:  # a noisy hit
                jitter = np.clip(rng.normal(0, 3, 4), -2, 2)  # boxes stay valid (COCOeval drops negative areas)
                rows.append((int(c), rng.uniform(0.3, 1.0), x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]))
        for _ in range(int(rng.integers(0, 4))):  # false positives
            x, y = rng.uniform(0, 90, 2)
            rows.append((int(rng.integers(classes)), rng.uniform(0.0, 0.8), x, y, x + rng.uniform(5, 30), y + rng.uniform(5, 30)))
        preds.append(det(rows))
    return preds, truths


def _pycocotools_map(preds: list[Detections], truths: list[np.ndarray], classes: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for i, (p, t) in enumerate(zip(preds, truths, strict=True)):
        images.append({"id": i, "width": 128, "height": 128})
        for c, x1, y1, x2, y2 in t:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
        for (x1, y1, x2, y2), s, c in zip(p.boxes, p.scores, p.classes, strict=True):
            results.append({"image_id": i, "category_id": int(c), "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c} for c in range(classes)]}
        truth.createIndex()
        found = truth.loadRes(results)
        evaluator = COCOeval(truth, found, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[1] * 100, evaluator.stats[0] * 100


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agrees_with_pycocotools(seed: int) -> None:
    pytest.importorskip("pycocotools.cocoeval")
    rng = np.random.default_rng(seed)
    preds, truths = _random_case(rng, images=25, classes=3)
    if not any(len(p) for p in preds):
        pytest.skip("no detections drawn")
    ours = mean_average_precision(preds, truths, 3)
    map50, map_all = _pycocotools_map(preds, truths, 3)
    assert ours.map50 == pytest.approx(map50, abs=1e-6)
    assert ours.map50_95 == pytest.approx(map_all, abs=1e-6)
