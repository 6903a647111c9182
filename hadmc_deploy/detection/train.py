"""Training the demo detector on CPU: task-aligned assignment (YOLOv8's TAL), GIoU + BCE.

Used by tools/train_detector.py only; the build never trains a detector (the user brings
one). Kept deliberately small: no mosaic or mixup, flips only, since the synthetic set is
large enough for a tiny model and training must finish in minutes on two cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hadmc_deploy.detection.dataset import DetectionDataset
from hadmc_deploy.errors import TrainingDivergedError
from hadmc_deploy.train import seed_everything
from hadmc_deploy.ui import UI, quiet_ui


@dataclass(frozen=True)
class DetectorTrainOptions:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    topk: int = 10  # candidate anchors per object (TAL)
    box_gain: float = 7.5  # YOLOv8's loss weights
    cls_gain: float = 0.5
    seed: int = 0


def anchor_grid(maps: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (A,2) in pixels and strides (A,), levels largest map first (as decode does)."""
    points, strides = [], []
    for m in sorted(maps, key=lambda m: -m.shape[2]):
        h, w = m.shape[2:]
        stride = input_hw[0] / h
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).add(0.5).mul(stride))
        strides.append(torch.full((h * w,), stride))
    return torch.cat(points), torch.cat(strides)


def flat_predictions(maps: tuple[torch.Tensor, ...], points: torch.Tensor, strides: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes N,A,4 xyxy pixels, class logits N,A,nc), in the same anchor order as `anchor_grid`."""
    flat = torch.cat([m.flatten(2) for m in sorted(maps, key=lambda m: -m.shape[2])], 2).transpose(1, 2)
    ltrb = F.softplus(flat[..., :4]) * strides[None, :, None]
    boxes = torch.cat([points[None] - ltrb[..., :2], points[None] + ltrb[..., 2:]], -1)
    return boxes, flat[..., 4:]


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def _giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (pred[:, 2:] - pred[:, :2]).prod(-1) + (target[:, 2:] - target[:, :2]).prod(-1) - inter + 1e-9
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).prod(-1) + 1e-9
    return 1 - (inter / union - (hull - union) / hull)


@torch.no_grad()
def assign(boxes: torch.Tensor, scores: torch.Tensor, gt: torch.Tensor, points: torch.Tensor, strides: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: (foreground mask A, assigned gt index A, class-target weight A) by task alignment."""
    num_anchors = len(points)
    if len(gt) == 0:
        return torch.zeros(num_anchors, dtype=torch.bool), torch.zeros(num_anchors, dtype=torch.long), torch.zeros(num_anchors)
    cls, gt_boxes = gt[:, 0].long(), gt[:, 1:5]
    centre, half = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2, (gt_boxes[:, 2:] - gt_boxes[:, :2]) / 2
    # Anchor centres inside the box, the box widened to one stride so thin marks get anchors too.
    reach = torch.maximum(half[:, None, :], strides[None, :, None].expand(-1, -1, 2) * 0.5)
    inside = ((points[None] - centre[:, None]).abs() < reach).all(-1)
    ious = _iou(gt_boxes, boxes)
    align = scores[:, cls].T.pow(0.5) * ious.pow(6) * inside
    k = min(topk, num_anchors)
    top = torch.zeros_like(inside)
    top.scatter_(1, align.topk(k, dim=1).indices, True)
    pos = top & inside & (align > 0)
    crowded = pos.sum(0) > 1  # an anchor claimed by several objects goes to the one it overlaps most
    if crowded.any():
        best = ious.argmax(0)
        pos[:, crowded] = False
        pos[best[crowded], crowded.nonzero().squeeze(1)] = True
    fg = pos.any(0)
    target = pos.float().argmax(0)
    align = align * pos
    norm = align / (align.amax(1, keepdim=True) + 1e-9) * (ious * pos).amax(1, keepdim=True)
    weight = norm.amax(0)
    return fg, target, weight


def detection_loss(maps: tuple[torch.Tensor, ...], labels: list[torch.Tensor], input_hw: tuple[int, int], options: DetectorTrainOptions) -> torch.Tensor:
    points, strides = anchor_grid(list(maps), input_hw)
    boxes, logits = flat_predictions(maps, points, strides)
    cls_target = torch.zeros_like(logits)
    box_loss, weight_sum = logits.new_zeros(()), logits.new_zeros(())
    for i, gt in enumerate(labels):
        fg, target, weight = assign(boxes[i].detach(), logits[i].detach().sigmoid(), gt, points, strides, options.topk)
        if not fg.any():
            continue
        cls_target[i, fg, gt[target[fg], 0].long()] = weight[fg]
        box_loss = box_loss + (_giou_loss(boxes[i, fg], gt[target[fg], 1:5]) * weight[fg]).sum()
        weight_sum = weight_sum + weight[fg].sum()
    norm = weight_sum.clamp(min=1.0)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / norm
    return options.box_gain * box_loss / norm + options.cls_gain * cls_loss


def _flip(x: torch.Tensor, labels: list[torch.Tensor], rng: np.random.Generator, input_hw: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Random horizontal and vertical flips per batch (surface textures have no up or left)."""
    height, width = input_hw
    if rng.random() < 0.5:
        x = x.flip(3)
        labels = [torch.stack([g[:, 0], width - g[:, 3], g[:, 2], width - g[:, 1], g[:, 4]], 1) for g in labels]
    if rng.random() < 0.5:
        x = x.flip(2)
        labels = [torch.stack([g[:, 0], g[:, 1], height - g[:, 4], g[:, 3], height - g[:, 2]], 1) for g in labels]
    return x, labels


def train_detector(model: nn.Module, data: DetectionDataset, options: DetectorTrainOptions = DetectorTrainOptions(), ui: UI | None = None) -> nn.Module:
    """AdamW, linear warm-up then cosine decay; stops with a clear error if the loss turns NaN."""
    ui = ui or quiet_ui()
    seed_everything(options.seed)
    rng = np.random.default_rng(options.seed)
    steps_per_epoch = math.ceil(len(data) / options.batch_size)
    total, warmup = options.epochs * steps_per_epoch, max(1, int(options.warmup_epochs * steps_per_epoch))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=options.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))) * 0.95 + 0.05)
    labels_all = [torch.from_numpy(lab) for lab in data.labels]
    model.train()
    with ui.progress("train detector", total) as task:
        for epoch in range(options.epochs):
            order = rng.permutation(len(data))
            running = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * options.batch_size : (step + 1) * options.batch_size]
                xb, labels = _flip(torch.from_numpy(data.x[idx]), [labels_all[i] for i in idx], rng, data.input_hw)
                loss = detection_loss(model(xb), labels, data.input_hw, options)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"detector loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}", hint="lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                sched.step()
                running += loss.item()
                task.advance()
            ui.log(f"epoch {epoch + 1}/{options.epochs}: loss {running / steps_per_epoch:.3f}")
    model.eval()
    return model
