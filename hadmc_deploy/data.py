"""One loader for calibration, evaluation and fine-tuning data.

Sources (the string a user passes as --train/--calib/--eval):
  * `builtin:fashion-mnist[:train|:test]` - Debian's dataset-fashion-mnist files;
  * `builtin:digits[:train|:test]` - scikit-learn's 8x8 digits (a fixed 80/20 split);
  * `path/to/data.npz` - arrays `x` (N,C,H,W, N,H,W,C or N,H,W; uint8 or float) and `y` ((N,) or one-hot (N, K)),
    or a split's `x_train`/`y_train` named as `data.npz:train` (Keras' mnist.npz);
  * an IDX directory (MNIST format, gzipped or not), optionally `DIR:train` / `DIR:test`,
    or an IDX images file (`...-images-idx3-ubyte[.gz]`, labels found beside it);
  * an ImageFolder-style directory (`DIR/<class>/<image>`, needs Pillow; `DIR:val` reads
    `DIR/val/<class>/`), or a directory of images alone (unlabelled: calibration only).
Everything comes back as float32 NCHW arrays, resized and normalised the same way
for every stage, so calibration sees exactly what evaluation and training see.

Long because it holds one small reader per on-disk format (builtin, npz, IDX, image folder)
behind the one loader every stage uses.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become model input: resize, channel count, x/255 then (x - mean) / std."""

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None  # None: ImageNet's for 3 channels, 0.5 otherwise
    std: tuple[float, ...] | None = None
    channels: int | None = None  # replicate grayscale to 3 channels when asked for 3

    def stats_for(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean = self.mean or (IMAGENET_MEAN if channels == 3 else (0.5,) * channels)
        std = self.std or (IMAGENET_STD if channels == 3 else (0.5,) * channels)
        if len(mean) == 1:
            mean = mean * channels
        if len(std) == 1:
            std = std * channels
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"--mean/--std give {len(mean)}/{len(std)} values for {channels}-channel data", hint=f"pass 1 or {channels} values")
        if any(s <= 0 for s in std):
            raise DataError("--std values must be positive")
        return tuple(mean), tuple(std)

    def to_dict(self) -> dict:
        return {"resize": self.resize, "mean": self.mean, "std": self.std, "channels": self.channels}


#: the label of an image that has none (calibration-only data).
UNLABELLED = -1


@dataclass
class ArrayDataset:
    """Preprocessed images `x` (float32 N,C,H,W) and labels `y` (int64 N,), with where they came from."""

    x: np.ndarray
    y: np.ndarray
    source: str
    preprocess: dict = field(default_factory=dict)
    #: each sample's place in the source's seeded shuffle (`load_data`), where it was loaded from one
    shuffle_ranks: np.ndarray | None = field(default=None, repr=False)
    #: the seed of that shuffle
    shuffle_seed: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0

    @property
    def labelled(self) -> bool:
        return bool(len(self.y)) and bool((self.y != UNLABELLED).all())

    def sha256(self) -> str:
        """A hash of the preprocessed data, to key caches (calibration ranges, builds)."""
        digest = hashlib.sha256()
        digest.update(str(self.x.shape).encode())
        # a view, not a copy: the same digest without copying the preprocessed images (0.8 GB at 224)
        digest.update(memoryview(np.ascontiguousarray(self.x)).cast("B"))
        digest.update(memoryview(np.ascontiguousarray(self.y)).cast("B"))
        return digest.hexdigest()

    def shuffled_order(self, seed: int = 0) -> np.ndarray:
        """The samples' indices in a fixed shuffle. Loaded from a source, the shuffle is the
        source's (its first samples are the same whichever number was loaded), else a seeded
        permutation of these samples. Why: a build loads as many calibration images as its
        passes reach, which depends on the pruned model; the ranges and the INT8 check take the
        first of them and are reused across builds only when they are the same images."""
        if self.shuffle_ranks is not None and seed == self.shuffle_seed:
            return np.argsort(self.shuffle_ranks, kind="stable")
        return np.random.default_rng(seed).permutation(len(self))

    def take(self, order: np.ndarray, source: str) -> ArrayDataset:
        """The samples at `order` (their shuffle ranks kept)."""
        ranks = self.shuffle_ranks[order] if self.shuffle_ranks is not None else None
        return ArrayDataset(self.x[order], self.y[order], source, self.preprocess, ranks, self.shuffle_seed)

    def subset(self, n: int | None, seed: int = 0) -> ArrayDataset:
        """The first n samples of a fixed shuffle (`shuffled_order`; class balance is kept in expectation)."""
        if n is None or n >= len(self):
            return self
        order = self.shuffled_order(seed)[:n]
        order.sort()
        return self.take(order, f"{self.source}[{n}]")

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def torch_dataset(self):  # noqa: ANN201 - torch is imported lazily
        import torch
        from torch.utils.data import TensorDataset

        return TensorDataset(torch.from_numpy(self.x), torch.from_numpy(self.y))


# -- readers: each returns raw (x as N,C,H,W uint8 or float, y int64) ---------------------
def _open_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc


def read_idx(path: Path) -> np.ndarray:
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {body.size} values")
    return body.reshape(dims)


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    candidates = [images.with_name(name)]
    if name.endswith(".gz"):
        candidates.append(images.with_name(name[:-3]))
    else:
        candidates.append(images.with_name(name + ".gz"))
    for cand in candidates:
        if cand.is_file():
            return cand
    raise DataError(f"no labels file beside {images}", hint=f"expected {candidates[0].name}")


def _read_idx_pair(images: Path) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(_labels_beside(images)).astype(np.int64)
    if x.ndim == 3:
        x = x[:, None]
    if len(x) != len(y):
        raise DataError(f"{images}: {len(x)} images but {len(y)} labels")
    return x, y


def _idx_dir(directory: Path, split: str | None) -> tuple[np.ndarray, np.ndarray]:
    return _read_idx_pair(_idx_images(directory, split))


def _idx_images(directory: Path, split: str | None) -> Path:
    """The IDX images file of `split` (or the only one) in a directory."""
    images = sorted(p for p in directory.iterdir() if "images-idx3" in p.name or "images.idx3" in p.name)
    if not images:
        raise DataError(f"{directory} holds no IDX images file (*-images-idx3-ubyte[.gz])")
    if split is not None:
        key = {"train": "train", "test": "t10k"}.get(split, split)
        images = [p for p in images if p.name.startswith(key)]
        if not images:
            raise DataError(f"{directory} has no {split!r} IDX split")
    elif len(images) > 1:
        prefixes = sorted({p.name.split("-")[0] for p in images})
        if len(prefixes) > 1:
            raise DataError(f"{directory} holds several IDX splits ({', '.join(prefixes)})", hint=f"name one: {directory}:train or {directory}:test")
    return images[0]


def _npz_keys(files: list[str], path: Path, split: str | None) -> tuple[str, str]:
    """The (images, labels) array names of an npz: 'x' and 'y', or a split's 'x_<split>' and
    'y_<split>' (Keras' mnist.npz holds x_train, y_train, x_test, y_test), named as `FILE.npz:train`."""
    splits = sorted(name[2:] for name in files if name.startswith("x_"))
    if split is not None:
        if f"x_{split}" not in files:
            raise DataError(f"{path} has no split {split!r} (arrays: {', '.join(files) or 'none'})",
                            hint=f"name one of its splits: {', '.join(f'{path}:{s}' for s in splits)}" if splits else f"pass {path} alone")
        return f"x_{split}", f"y_{split}"
    if "x" in files:
        return "x", "y"
    if len(splits) == 1:
        return f"x_{splits[0]}", f"y_{splits[0]}"
    if splits:
        raise DataError(f"{path} holds several splits ({', '.join(splits)})", hint=f"name one: {path}:{splits[0]}")
    raise DataError(f"{path} must hold arrays 'x' and 'y' (images and labels; 'y' may be left out for calibration-only data); it has {', '.join(files) or 'none'}")


def _npz(path: Path, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            x_key, y_key = _npz_keys(data.files, path, split)
            x = data[x_key]
            # No 'y': unlabelled images, enough for calibration; training and evaluation refuse them.
            y = data[y_key] if y_key in data else np.full(len(x), UNLABELLED, dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{path}: 'x' must be N,C,H,W, N,H,W,C or N,H,W, got shape {x.shape}")
    y = _class_indices(y)
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be one label per image ({len(x)}), got shape {y.shape}",
                        hint="give class indices (N,), or one-hot rows (N, classes)")
    if x.dtype not in (np.uint8, np.float32, np.float64, np.float16):
        raise DataError(f"{path}: 'x' must be uint8 or float, got {x.dtype}", hint="save 'x' as uint8 pixels (0-255) or floats (0-1)")
    if _channels_last(x.shape):
        # Keras, TensorFlow and PIL-built arrays are N,H,W,C: read as N,C,H,W they had H channels
        # ("32-channel images but the model takes 3")
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x, y.astype(np.int64)


def _class_indices(y: np.ndarray) -> np.ndarray:
    """Labels as class indices: (N, 1) columns and one-hot (N, classes) rows, as Keras saves them,
    become (N,); anything else is returned as it is, for the caller's shape check."""
    if y.ndim == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.ndim == 2 and y.shape[1] > 1 and len(y) and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        return y.argmax(axis=1)
    return y


#: channel counts an image array has (gray, gray + alpha, colour, colour + alpha)
IMAGE_CHANNELS = (1, 2, 3, 4)


def _channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 4-D image array is N,H,W,C: its last axis is a channel count and its second is not
    (an N,C,H,W array's second axis is; one with both, such as N,3,4,3, is taken as N,C,H,W)."""
    return shape[3] in IMAGE_CHANNELS and shape[1] not in IMAGE_CHANNELS


def _image_files(directory: Path, split: str | None = None) -> list[tuple[int, Path]]:
    """(label, file) of every image in a folder: DIR/<class>/ labelled by the classes' sorted order;
    images directly in DIR, no class folders, unlabelled, as a calibration set often is (training
    and evaluation refuse them, like an npz without 'y'). `split` ("DIR:val") reads DIR/val/, as
    ImageNet-style trees (DIR/train/<class>/, DIR/val/<class>/) are laid out."""
    if split is not None:
        if not (directory / split).is_dir():
            folders = sorted(p.name for p in directory.iterdir() if p.is_dir())
            raise DataError(f"{directory} has no folder {split!r}", hint=f"name one of {', '.join(folders)}" if folders else f"pass {directory} alone")
        directory = directory / split
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    folders = [(label, directory / cls) for label, cls in enumerate(classes)] or [(UNLABELLED, directory)]
    return [(label, file) for label, folder in folders for file in sorted(folder.iterdir())
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES]


def _holds_idx(directory: Path) -> bool:
    """Whether a directory source is an IDX set (else it is an image folder)."""
    return any("idx3" in p.name for p in directory.iterdir())


def _pil_image() -> Any:
    """PIL's Image module, or the one-line error an image folder needs without Pillow."""
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError("reading an image folder needs Pillow", hint="pip install pillow") from exc
    return Image


def _unreadable(file: Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {file}: {exc}", hint="remove or replace the file: every image of the folder is read")


def check_image_files(source: str) -> None:
    """Every file of an image-folder source opens as an image (its header only; other sources pass):
    a build checks this before its heavy stages, which otherwise met a broken file in --eval when
    the evaluation first read the folder, after the latency table, the search and recovery."""
    if source.startswith("builtin:"):
        return
    path, split = _resolve(source)
    if not path.is_dir() or _holds_idx(path):
        return
    image = _pil_image()
    for _, file in _image_files(path, split):
        try:
            with image.open(file) as img:
                img.size  # noqa: B018 - the header is read on open; the size is what loading needs first
        except Exception as exc:
            raise _unreadable(file, exc) from exc


def _image_folder(directory: Path, resize: tuple[int, int] | None, split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    Image = _pil_image()  # noqa: N806 - PIL's module name, as every PIL caller spells it
    images, labels = [], []
    for label, file in _image_files(directory, split):
        try:
            with Image.open(file) as img:
                if img.mode.startswith("I;16") or img.mode == "I":
                    # 16-bit grayscale (medical, microscopy, depth PNGs): as floats in [0, 1] of the
                    # 16-bit range. convert("L") clipped every value above 255, so such an image read
                    # as white wherever it was not black.
                    img, scale = img.convert("I").convert("F"), 65535.0
                else:
                    img, scale = img.convert("RGB" if img.mode != "L" else "L"), None
                if resize is not None:
                    img = img.resize((resize[1], resize[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8) if scale is None else np.clip(np.asarray(img, dtype=np.float32) / scale, 0.0, 1.0)
        except Exception as exc:
            raise _unreadable(file, exc) from exc
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if images and arr.shape[1:] != images[0].shape[1:]:
            raise DataError(f"image {file} is {arr.shape[1]}x{arr.shape[2]}, others {images[0].shape[1]}x{images[0].shape[2]}",
                            hint="give images of one size (a build resizes them to its --input-shape)")
        images.append(arr)
        labels.append(label)
    if len({a.shape[0] for a in images}) > 1:
        # a colour folder with a few grayscale files (ImageNet's JPEGs include some): the grayscale
        # ones become colour, as PIL's convert("RGB") makes them (R = G = B); they were refused,
        # with advice to resize them
        images = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in images]
    if len({a.dtype for a in images}) > 1:  # 8- and 16-bit files in one folder: all as floats in [0, 1]
        images = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in images]
    if not images:
        nested = sorted(p.name for p in directory.iterdir() if p.is_dir() and any(q.is_dir() for q in p.iterdir())) if split is None else []
        hint = (f"its folders hold folders (a tree of splits?): name one, {directory}:{nested[0]}" if nested
                else "put the images in DIR (unlabelled: calibration only) or in DIR/<class>/ (labelled)")
        raise DataError(f"{directory if split is None else directory / split} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", hint=hint)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _check_builtin(name: str, split: str) -> None:
    """The builtin's name, split and (for Fashion-MNIST) files, without reading any image."""
    if name not in ("fashion-mnist", "digits"):
        raise DataError(f"unknown builtin dataset {name!r}", hint="use builtin:fashion-mnist or builtin:digits")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for builtin:{name}", hint="use :train or :test")
    if name == "fashion-mnist" and not FASHION_MNIST_DIR.is_dir():
        raise DataError(f"builtin:fashion-mnist needs {FASHION_MNIST_DIR}", hint="apt-get install dataset-fashion-mnist, or use builtin:digits")


def _builtin(name: str, split: str | None) -> tuple[np.ndarray, np.ndarray]:
    split = split or "train"
    _check_builtin(name, split)
    if name == "fashion-mnist":
        return _idx_dir(FASHION_MNIST_DIR, split)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise DataError("builtin:digits needs scikit-learn", hint="pip install scikit-learn") from exc
        digits = load_digits()
        x = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
        y = digits.target.astype(np.int64)
        order = np.random.default_rng(0).permutation(len(x))
        cut = int(len(x) * 0.8)
        part = order[:cut] if split == "train" else order[cut:]
        part.sort()
        return x[part], y[part]
    raise AssertionError(f"builtin {name!r} passed _check_builtin but has no reader")


def check_source_exists(source: str) -> None:
    """Cheap up-front check (no reading) so a build fails before its heavy stages, not after."""
    if source.startswith("builtin:"):
        name, _, split = source[len("builtin:") :].partition(":")
        _check_builtin(name, split or "train")
        return
    if Path(source).exists():
        return
    base, sep, _ = source.rpartition(":")
    if sep and (Path(base).is_dir() or (Path(base).suffix == ".npz" and Path(base).is_file())):
        return
    raise DataError(f"data source {source} does not exist", hint="pass a directory, an .npz, an IDX file or builtin:fashion-mnist")


def source_identity(source: str) -> tuple[str, str]:
    """(what, split) a data source names, so that two spellings of one source compare equal
    (`builtin:fashion-mnist` and `builtin:fashion-mnist:train`, a folder by relative or absolute path)."""
    if source.startswith("builtin:"):
        name, _, split = source[len("builtin:") :].partition(":")
        return f"builtin:{name}", split or "train"
    path, split = _split_source(source)
    return str(path.resolve()), split or ""


def _split_source(source: str) -> tuple[Path, str | None]:
    """(path, split) as written, whether or not the path exists."""
    path = Path(source)
    if not path.exists() and ":" in source:
        base, _, split = source.rpartition(":")
        return Path(base), split
    return path, None


def _resolve(source: str) -> tuple[Path, str | None]:
    """(path, split) of a file or directory source ("DIR:test" names a split of an IDX directory)."""
    path, split = _split_source(source)
    if not path.exists():
        raise DataError(f"data source {source} does not exist", hint="pass a directory, an .npz, an IDX file or builtin:fashion-mnist")
    return path, split


def source_labels(source: str) -> np.ndarray:
    """The labels of a source (UNLABELLED where it has none) without reading or preprocessing its
    images where the format allows: an IDX labels file, an npz's 'y', an image folder's class
    folders. Why: the build checks them against the model's classes before its heavy stages, and
    preprocessing the images (a ResNet-18's 224x224) is the cost of loading them."""
    if source.startswith("builtin:"):
        name, _, split = source[len("builtin:") :].partition(":")
        if name == "fashion-mnist":
            _check_builtin(name, split or "train")
            images = _idx_images(FASHION_MNIST_DIR, split or "train")
            return read_idx(_labels_beside(images)).astype(np.int64)
        return _builtin(name, split or None)[1]
    path, split = _resolve(source)
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                _, y_key = _npz_keys(data.files, path, split)
                if y_key in data:
                    return _class_indices(np.asarray(data[y_key])).astype(np.int64).reshape(-1)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
    elif path.is_file() and "idx3" in path.name:
        return read_idx(_labels_beside(path)).astype(np.int64)
    elif path.is_dir() and _holds_idx(path):
        return read_idx(_labels_beside(_idx_images(path, split))).astype(np.int64)
    elif path.is_dir():
        return np.asarray([label for label, _ in _image_files(path, split)], dtype=np.int64)
    return _read_raw(source, None)[1]


def available_memory_bytes() -> int | None:
    """Memory the kernel can give without swapping (MemAvailable in /proc/meminfo; None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_labels(source: str, labels: np.ndarray, role: str, num_classes: int | None) -> None:
    """Training and evaluation need a label per image, each below the model's class count; a
    calibration set's labels are never read (ranges, agreement checks and distillation take the
    original's outputs), so they are not checked."""
    if role not in ("train", "eval"):
        return
    if not len(labels):
        raise DataError(f"data source {source} is empty", hint="pass a directory, an .npz, an IDX file or builtin:fashion-mnist holding images")
    if (labels == UNLABELLED).any():
        flag = "--train" if role == "train" else "--eval"
        raise DataError(f"{flag} data {source} has no labels: {'training' if role == 'train' else 'evaluation'} needs one label per image",
                        hint="add a 'y' array to the npz (or use class folders / an IDX labels file); unlabelled images can serve as --calib")
    if num_classes is not None and int(labels.max()) + 1 > num_classes:
        raise DataError(f"{source} has labels up to {int(labels.max())} but the model has {num_classes} outputs",
                        hint="give data labelled with the model's classes, or the architecture with as many outputs as the data has classes")


def _read_raw(source: str, resize: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    if source.startswith("builtin:"):
        rest = source[len("builtin:") :]
        name, _, split = rest.partition(":")
        return _builtin(name, split or None)
    path, split = _resolve(source)
    if path.is_file():
        if path.suffix == ".npz":
            return _npz(path, split)
        if "idx3" in path.name:
            return _read_idx_pair(path)
        raise DataError(f"{path}: unknown data file type", hint="use .npz, an IDX images file, or a directory")
    if _holds_idx(path):
        return _idx_dir(path, split)
    return _image_folder(path, resize, split)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    import torch
    import torch.nn.functional as F

    out = []
    for start in range(0, len(x), 1024):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + 1024], dtype=np.float32))
        out.append(F.interpolate(chunk, size=size, mode="bilinear", align_corners=False).numpy())
    return np.concatenate(out)


def load_data(source: str, preprocess: Preprocess | None = None, *, limit: int | None = None, seed: int = 0) -> ArrayDataset:
    """Read, subset, resize and normalise a data source; errors name the file and the fix."""
    preprocess = preprocess or Preprocess()
    x, y = _read_raw(source, preprocess.resize)
    if len(x) == 0:
        raise DataError(f"data source {source} is empty")
    shuffle = np.random.default_rng(seed).permutation(len(x))
    ranks = np.empty(len(x), np.int64)
    ranks[shuffle] = np.arange(len(x))
    if limit is not None and limit < len(x):
        order = np.sort(shuffle[:limit])
        x, y, ranks = x[order], y[order], ranks[order]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    channels = x.shape[1]
    repeat = False
    if preprocess.channels is not None and preprocess.channels != channels:
        if channels == 1 and preprocess.channels == 3:
            repeat = True  # done last, on the resized images, fused with the normalisation
        elif channels == 3 and preprocess.channels == 1:
            # colour images for a grayscale model: ITU-R BT.601 luma, what PIL's convert("L") computes
            x = np.tensordot(np.asarray(LUMA_WEIGHTS, np.float32), x, axes=([0], [1]))[:, None]
            channels = 1
        else:
            raise DataError(f"{source} has {channels}-channel images but the model takes {preprocess.channels}",
                            hint="give images with 1 or 3 channels (grayscale ones are repeated for a colour model, colour ones turned to luma for a grayscale one)")
    mean, std = preprocess.stats_for(3 if repeat else channels)
    # checked on the small source: interpolation stays within its range, and the normalisation is finite
    # wherever its largest value over the smallest std is
    bound = (float(np.abs(x).max()) + max(abs(m) for m in mean)) / min(std) if np.isfinite(x).all() else np.inf
    if not np.isfinite(np.float32(bound)):
        raise DataError(f"{source} holds NaN or Inf values after preprocessing")
    # Resize first, at the source's channel count, then repeat and normalise in one pass: for
    # 4,224 Fashion-MNIST images to 3x224x224 this took 33 s the other way round (normalising and
    # checking 2.5 GB, interpolating three identical channels), a fifth of a ResNet-18 build.
    if preprocess.resize is not None:
        x = _resize(x, preprocess.resize)
    out_channels = 3 if repeat else channels
    out = np.empty((len(x), out_channels, *x.shape[2:]), np.float32) if repeat else x
    for c in range(out_channels):
        np.subtract(x[:, 0 if repeat else c], np.float32(mean[c]), out=out[:, c])
        out[:, c] /= np.float32(std[c])
    x = out
    return ArrayDataset(np.ascontiguousarray(x, dtype=np.float32), y, source, {**preprocess.to_dict(), "mean": mean, "std": std}, ranks, seed)


def check_matches_model(data: ArrayDataset, input_shape: tuple[int, ...], num_classes: int | None = None, role: str | None = None) -> None:
    """Fail early, naming the mismatch, when data cannot feed the model (in `role`: train, calib, eval)."""
    check_labels(data.source, data.y, role or "calib", num_classes)
    want_c, want_hw = input_shape[1], tuple(input_shape[2:])
    got_c, got_hw = data.x.shape[1], tuple(data.x.shape[2:])
    if got_c != want_c:
        raise DataError(f"{data.source} has {got_c}-channel images but the model takes {want_c}", hint="pass --channels to convert or use matching data")
    if got_hw != want_hw:
        raise DataError(f"{data.source} has {got_hw[0]}x{got_hw[1]} images but the model takes {want_hw[0]}x{want_hw[1]}", hint=f"pass --resize {want_hw[0]},{want_hw[1]}")
