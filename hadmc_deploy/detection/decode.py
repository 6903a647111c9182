"""Raw head maps -> boxes, scores and classes per image (numpy), with class-aware NMS.

The model returns one map per stride, [N, 4 + nc, H/s, W/s]; the stride of each is read
from its size against the input's, so the maps may arrive in any order (ONNX Runtime
returns them by output name). Channels 0-3 are ltrb distances in stride units through
softplus, the rest class logits through sigmoid (see `hadmc_deploy.models.yolo`).

NMS is a short greedy numpy loop rather than torchvision's kernel: torchvision is not a
dependency, and evaluation must decode ONNX Runtime outputs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hadmc_deploy.errors import DataError


@dataclass(frozen=True)
class DecodeOptions:
    """Thresholds as used for mAP (low confidence, 100 detections per image, like COCO)."""

    conf_threshold: float = 0.001
    iou_threshold: float = 0.6
    max_detections: int = 100
    max_candidates: int = 3000  # top scores kept before NMS


@dataclass
class Detections:
    """One image's detections: boxes (k,4) x1 y1 x2 y2 in input pixels, scores (k,), classes (k,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free form


def flatten_maps(maps: Sequence[np.ndarray], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes N,A,4 xyxy pixels, class scores N,A,nc, strides A) over every level."""
    if not maps:
        raise DataError("the model returned no outputs to decode")
    channels = {m.shape[1] for m in maps}
    if len(channels) != 1 or any(m.ndim != 4 for m in maps) or next(iter(channels)) < 5:
        raise DataError(f"detection outputs must be maps [N, 4 + classes, H, W] with one channel count; got {[tuple(m.shape) for m in maps]}")
    boxes, scores, strides = [], [], []
    for m in sorted(maps, key=lambda m: -m.shape[2]):
        n, c, h, w = m.shape
        stride = input_hw[0] / h
        if abs(input_hw[1] / w - stride) > 1e-6:
            raise DataError(f"output map {h}x{w} does not divide the input {input_hw[0]}x{input_hw[1]} evenly")
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        ax, ay = (xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride
        flat = m.reshape(n, c, h * w).astype(np.float32)
        ltrb = _softplus(flat[:, :4]) * stride
        boxes.append(np.stack([ax - ltrb[:, 0], ay - ltrb[:, 1], ax + ltrb[:, 2], ay + ltrb[:, 3]], -1))
        scores.append(_sigmoid(flat[:, 4:]).transpose(0, 2, 1))
        strides.append(np.full(h * w, stride, np.float32))
    return np.concatenate(boxes, 1), np.concatenate(scores, 1), np.concatenate(strides)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n,4) and b (m,4), x1 y1 x2 y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices kept by greedy NMS, highest score first; stops once `limit` boxes are kept."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and (limit is None or len(keep) < limit):
        best = order[0]
        keep.append(best)
        if order.size == 1:
            break
        ious = box_iou(boxes[best : best + 1], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, np.int64)


def decode_image(boxes: np.ndarray, scores: np.ndarray, options: DecodeOptions, input_hw: tuple[int, int]) -> Detections:
    """One image: every (anchor, class) pair over the threshold, class-aware NMS, top `max_detections`."""
    anchor, cls = np.nonzero(scores > options.conf_threshold)
    if anchor.size == 0:
        return Detections.empty()
    conf = scores[anchor, cls]
    if conf.size > options.max_candidates:
        top = np.argpartition(-conf, options.max_candidates)[: options.max_candidates]
        anchor, cls, conf = anchor[top], cls[top], conf[top]
    cand = boxes[anchor].copy()
    cand[:, 0::2] = np.clip(cand[:, 0::2], 0, input_hw[1])
    cand[:, 1::2] = np.clip(cand[:, 1::2], 0, input_hw[0])
    offset = cls[:, None].astype(np.float32) * (max(input_hw) + 1.0)  # boxes of different classes never overlap
    keep = nms(cand + offset, conf, options.iou_threshold, options.max_detections)
    return Detections(cand[keep].astype(np.float32), conf[keep].astype(np.float32), cls[keep].astype(np.int64))


def decode(maps: Sequence[np.ndarray], input_hw: tuple[int, int], options: DecodeOptions = DecodeOptions()) -> list[Detections]:
    """Detections for every image of a batch."""
    boxes, scores, _ = flatten_maps(maps, input_hw)
    return [decode_image(boxes[i], scores[i], options, input_hw) for i in range(len(boxes))]
