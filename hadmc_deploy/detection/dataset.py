"""Detection data in the YOLO on-disk format, loaded the way `hadmc_deploy.data` loads images.

Layout (Ultralytics' convention, so a user's real dataset loads the same way):

    DIR/data.yaml            path/train/val/names (names as a list or an index mapping)
    DIR/images/<split>/*.png  (any Pillow-readable image)
    DIR/labels/<split>/*.txt  one object per line: `cls cx cy w h`, normalised to [0, 1]

Source strings: `yolo:DIR[:split]` or `DIR/data.yaml[:split]` (split defaults to `val`).
Images are resized (stretched, no letterbox) to `Preprocess.resize` and normalised exactly
as classification data, so a `DetectionDataset` is an `ArrayDataset` (x N,C,H,W float32,
`source`, `preprocess`, `sha256`) that calibration takes unchanged. Its `y` is the image
index within the split; boxes live in `labels`: one float32 (k, 5) array per image,
rows `cls x1 y1 x2 y2` in input pixels.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hadmc_deploy.data import IMAGE_SUFFIXES, ArrayDataset, Preprocess, load_data
from hadmc_deploy.errors import DataError

YOLO_PREFIX = "yolo:"
DATA_YAML = "data.yaml"
DEFAULT_SPLIT = "val"


@dataclass
class DetectionDataset(ArrayDataset):
    """Images plus per-image boxes; see the module docstring for the fields."""

    labels: list[np.ndarray] = field(default_factory=list)
    class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])

    def sha256(self) -> str:
        digest = hashlib.sha256(super().sha256().encode())
        for lab in self.labels:
            digest.update(np.ascontiguousarray(lab, np.float32).tobytes())
        return digest.hexdigest()

    def subset(self, n: int | None, seed: int = 0) -> DetectionDataset:
        if n is None or n >= len(self):
            return self
        order = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return self.take(order, f"{self.source}[{n}]")

    def take(self, order: np.ndarray, source: str | None = None) -> DetectionDataset:
        return DetectionDataset(self.x[order], self.y[order], source or self.source, self.preprocess, labels=[self.labels[i] for i in order], class_names=self.class_names)


def is_detection_source(source: str) -> bool:
    """True for `yolo:...`, a data.yaml, or a directory holding one (so the task can be inferred)."""
    if source.startswith(YOLO_PREFIX):
        return True
    path = Path(_split_source(source)[0])
    return path.name == DATA_YAML or (path.is_dir() and (path / DATA_YAML).is_file())


def check_detection_source(source: str) -> None:
    """Fail before any stage runs when a detection source names no dataset."""
    path = Path(_split_source(source)[0])
    root = path.parent if path.name == DATA_YAML else path
    if not (root / DATA_YAML).is_file():
        raise DataError(f"detection data {source}: no {DATA_YAML} in {root}", hint="pass yolo:DIR[:split] where DIR holds data.yaml, images/ and labels/")


def _split_source(source: str) -> tuple[str, str | None]:
    body = source[len(YOLO_PREFIX):] if source.startswith(YOLO_PREFIX) else source
    if Path(body).exists():
        return body, None
    base, sep, split = body.rpartition(":")
    if sep and Path(base).exists() and "/" not in split:
        return base, split
    return body, None


def parse_data_yaml(text: str, where: str) -> dict:
    """The flat subset of YAML that data.yaml files use; PyYAML when installed, else this reader.

    Hand-written fallback because PyYAML is not a dependency and these files are
    `key: value` lines, with `names` as an inline list or an indented `index: name` block.
    """
    try:
        import yaml

        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise DataError(f"{where} is not a YAML mapping")
        return loaded
    except ImportError:
        pass
    result: dict = {}
    block: dict | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise DataError(f"{where}: cannot read line {raw.strip()!r}", hint="install PyYAML for full YAML support")
        value = value.strip()
        if line[0].isspace() and block is not None:
            block[_scalar(key)] = _scalar(value)
        elif value:
            result[key] = _scalar(value)
            block = None
        else:
            block = result[key] = {}
    return result


def _scalar(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("'\"")


def _class_names(meta: dict, where: str) -> tuple[str, ...]:
    names = meta.get("names")
    if isinstance(names, dict):
        try:
            ordered = [names[i] for i in range(len(names))]
        except KeyError as exc:
            raise DataError(f"{where}: `names` must map 0..{len(names) - 1} to class names") from exc
        return tuple(str(n) for n in ordered)
    if isinstance(names, (list, tuple)) and names:
        return tuple(str(n) for n in names)
    raise DataError(f"{where} has no `names` list", hint="add e.g. names: [scratch, patch]")


def resolve_split(source: str) -> tuple[Path, Path, Path, tuple[str, ...], str]:
    """(root, images dir, labels dir, class names, split) of a detection source."""
    location, split = _split_source(source)
    path = Path(location)
    yaml_path = path if path.suffix in (".yaml", ".yml") else path / DATA_YAML
    if not yaml_path.is_file():
        raise DataError(f"detection source {source}: no {yaml_path}", hint="pass yolo:DIR[:split] where DIR holds data.yaml, images/ and labels/")
    meta = parse_data_yaml(yaml_path.read_text(), str(yaml_path))
    names = _class_names(meta, str(yaml_path))
    split = split or DEFAULT_SPLIT
    if split not in meta:
        raise DataError(f"{yaml_path} names no {split!r} split", hint=f"splits there: {', '.join(k for k in meta if k in ('train', 'val', 'test')) or 'none'}")
    root = yaml_path.parent / str(meta.get("path", "") or "")
    images = root / str(meta[split])
    if not images.is_dir():
        raise DataError(f"{source}: split directory {images} does not exist", hint="list files are not supported; point the split at an images directory")
    parts = list(images.parts)
    if "images" not in parts:
        raise DataError(f"{images}: YOLO layout keeps images under an `images` directory (labels beside it in `labels`)")
    at = len(parts) - 1 - parts[::-1].index("images")
    labels = Path(*parts[:at], "labels", *parts[at + 1:])
    return root, images, labels, names, split


def read_label_file(path: Path, num_classes: int) -> np.ndarray:
    """(k, 5) float32 rows `cls cx cy w h` (normalised); an absent file means no objects."""
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = [float(v) for v in fields[:5]]
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: not numbers: {line.strip()!r}") from exc
        if len(fields) != 5:
            raise DataError(f"{path}:{lineno}: expected `cls cx cy w h`, got {len(fields)} fields", hint="segmentation polygons are not supported")
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DataError(f"{path}:{lineno}: class {fields[0]} is not an integer in 0..{num_classes - 1}")
        if not all(0.0 <= v <= 1.0 for v in values[1:]) or values[3] <= 0 or values[4] <= 0:
            raise DataError(f"{path}:{lineno}: box {values[1:]} is not normalised to (0, 1]")
        rows.append(values)
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _read_image(file: Path, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as img:
            gray = img.mode in ("L", "I;16", "1") and channels != 3
            img = img.convert("L" if gray else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"cannot read image {file}: {exc}") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_detection(source: str, preprocess: Preprocess | None = None, *, limit: int | None = None, seed: int = 0) -> DetectionDataset:
    """Read one split of a YOLO-format dataset: resize, normalise, boxes in input pixels."""
    preprocess = preprocess or Preprocess()
    _, images_dir, labels_dir, names, _ = resolve_split(source)
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    index = np.arange(len(files))
    if limit is not None and limit < len(files):
        index = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
    images, labels = [], []
    for i in index:
        arr = _read_image(files[i], preprocess.resize, preprocess.channels)
        if images and arr.shape != images[0].shape:
            raise DataError(f"image {files[i]} has shape {arr.shape}, others {images[0].shape}", hint="pass --resize H,W")
        images.append(arr)
        height, width = arr.shape[1:]
        norm = read_label_file(labels_dir / f"{files[i].stem}.txt", len(names))
        cx, cy, bw, bh = norm[:, 1] * width, norm[:, 2] * height, norm[:, 3] * width, norm[:, 4] * height
        labels.append(np.stack([norm[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).astype(np.float32))
    x = np.stack(images).astype(np.float32) / 255.0
    channels = x.shape[1]
    if preprocess.channels is not None and preprocess.channels != channels:
        if channels == 1 and preprocess.channels == 3:
            x, channels = np.repeat(x, 3, axis=1), 3
        else:
            raise DataError(f"{source} has {channels}-channel images but {preprocess.channels} channels were asked for")
    mean, std = preprocess.stats_for(channels)
    x = (x - np.asarray(mean, np.float32)[None, :, None, None]) / np.asarray(std, np.float32)[None, :, None, None]
    return DetectionDataset(np.ascontiguousarray(x, np.float32), index.astype(np.int64), source, {**preprocess.to_dict(), "mean": mean, "std": std}, labels=labels, class_names=names)


def load_source(source: str, preprocess: Preprocess | None = None, *, limit: int | None = None, seed: int = 0) -> ArrayDataset:
    """Any data source: a detection set (YOLO format) as a `DetectionDataset`, anything else via `load_data`.

    The one call the build's data stage needs, so calibration, export verification and
    evaluation read detection sets without knowing the task.
    """
    if is_detection_source(source):
        return load_detection(source, preprocess, limit=limit, seed=seed)
    return load_data(source, preprocess, limit=limit, seed=seed)
