"""A deterministic, SYNTHETIC detection set in YOLO format: defect-like marks on textured steel.

No detection set is reachable offline, so this renders one (seeded, byte-identical for a
seed): grayscale images of a brushed, noisy surface with 1-4 marks from six classes, in the
spirit of NEU-DET's six steel-defect classes but drawn as distinct shapes so a tiny model
can learn them in minutes. Boxes are the tight bounds of each mark's drawn pixels. It is
not real data; numbers measured on it say how the pipeline treats a detector, not how any
detector does on real defects.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hadmc_deploy.detection.dataset import DATA_YAML
from hadmc_deploy.errors import UsageError

CLASS_NAMES = ("scratch", "patch", "pits", "ring", "cross", "triangle")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to render: split sizes, image size, object sizes (pixels) and the seed."""

    train: int = 2000
    val: int = 300
    size: int = 160
    min_object: int = 10
    max_object: int = 48
    max_objects: int = 4
    seed: int = 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed-steel texture: a gray level, a gradient, streaks along one axis, fine noise."""
    base = rng.uniform(90, 170)
    ramp = np.linspace(-1, 1, size)[None, :] * rng.uniform(-25, 25)
    streaks = rng.normal(0, rng.uniform(3, 10), size)
    img = base + ramp + (streaks[None, :] if rng.random() < 0.5 else streaks[:, None])
    img = img + rng.normal(0, rng.uniform(3, 9), (size, size))
    return img.astype(np.float32)


def _draw_mark(cls: int, rng: np.random.Generator, size: int, spec: SyntheticSpec) -> np.ndarray:
    """A 0..1 coverage mask (size x size) of one mark of class `cls`, placed at random."""
    from PIL import Image, ImageDraw

    extent = rng.uniform(spec.min_object, spec.max_object)
    cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = extent / 2
    if cls == 0:  # scratch: a long thin line at a random angle
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * r, np.sin(angle) * r
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 3)))
    elif cls == 1:  # patch: a filled irregular blob
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = r * rng.uniform(0.6, 1.0, 9)
        draw.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for t, a in zip(angles, radii, strict=True)], fill=255)
    elif cls == 2:  # pits: a cluster of small dots
        for _ in range(int(rng.integers(5, 12))):
            px, py = cx + rng.uniform(-r, r) * 0.9, cy + rng.uniform(-r, r) * 0.9
            pr = rng.uniform(1.0, 2.5)
            draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=255)
    elif cls == 3:  # ring: an ellipse outline
        ry = r * rng.uniform(0.6, 1.0)
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], outline=255, width=int(rng.integers(2, 4)))
    elif cls == 4:  # cross: two perpendicular strokes
        w = int(rng.integers(2, 4))
        draw.line([(cx - r, cy), (cx + r, cy)], fill=255, width=w)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=255, width=w)
    else:  # triangle: filled
        t0 = rng.uniform(0, 2 * np.pi)
        draw.polygon([(cx + r * np.cos(t0 + k * 2 * np.pi / 3), cy + r * np.sin(t0 + k * 2 * np.pi / 3)) for k in range(3)], fill=255)
    return np.asarray(mask, np.float32) / 255.0


def _box_of(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask > 0.25)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One uint8 (size x size) image and its objects (cls, x1, y1, x2, y2) in pixels."""
    img = _background(rng, spec.size)
    objects: list[tuple[int, float, float, float, float]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        cls = int(rng.integers(len(CLASS_NAMES)))
        for _attempt in range(10):  # keep marks apart so every box is visible
            mask = _draw_mark(cls, rng, spec.size, spec)
            box = _box_of(mask)
            if box is not None and all(_iou(box, o[1:]) < 0.1 for o in objects):
                break
        else:
            continue
        contrast = rng.uniform(45, 90) * (1 if rng.random() < 0.3 else -1)  # mostly dark marks
        img = img + mask * contrast
        objects.append((cls, *box))
    img = img + rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8), objects


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator, spec: SyntheticSpec) -> None:
    from PIL import Image

    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for i in range(count):
        img, objects = render_image(rng, spec)
        Image.fromarray(img, mode="L").save(images / f"{i:06d}.png")
        s = float(spec.size)
        lines = [f"{c} {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}" for c, x1, y1, x2, y2 in objects]
        (labels / f"{i:06d}.txt").write_text("".join(line + "\n" for line in lines))


def write_synthetic_dataset(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, overwrite: bool = False) -> Path:
    """Render the set into `out_dir` (YOLO layout + data.yaml + dataset.json); returns out_dir.

    Written into a sibling temp directory and renamed, so a crash leaves no half set.
    """
    if spec.train < 1 or spec.val < 1 or spec.size < 32 or not 4 <= spec.min_object <= spec.max_object < spec.size:
        raise UsageError(f"bad synthetic dataset spec {spec}", hint="train/val >= 1, size >= 32, 4 <= min_object <= max_object < size")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists", hint="pass another directory or overwrite=True")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rng = np.random.default_rng(spec.seed)
        _write_split(tmp, "train", spec.train, rng, spec)
        _write_split(tmp, "val", spec.val, rng, spec)
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
        (tmp / DATA_YAML).write_text(f"# SYNTHETIC data rendered by hadmc_deploy.detection.synthetic (seed {spec.seed})\npath: .\ntrain: images/train\nval: images/val\nnc: {len(CLASS_NAMES)}\nnames:\n{names}")
        (tmp / "dataset.json").write_text(json.dumps({"synthetic": True, "generator": "hadmc_deploy.detection.synthetic", "spec": spec.__dict__, "classes": list(CLASS_NAMES)}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
