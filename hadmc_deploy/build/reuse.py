"""Work a build does on a model that another build of the same model on this machine already did,
kept in the user cache between builds: the original's early export, and for every float graph its
activation ranges, its INT8 graph with the guard's verdict and its float outputs on the INT8
check's held-out images, and each artifact's --eval score. Timings are never kept: they are
measured again, side by side, in every build.

Why: a user asks again with another budget, guard or precision, or into another --out; each time
the build exported, calibrated, guarded INT8 and scored the original again. A random-weight
ResNet-18 at 224 built again after a --speedup 2 build took 58.3 s with only its table reused
(--speedup 2.5, before this module), 38.5-43.5 s with it (--speedup 2.4,
`tools/bench_build_time.py --repeat-speedup 2.4`, docs/latency_model.md "2026-12-04").

Entries are content-addressed: all but the export by the SHA-256 of the ONNX file they were
computed on, of the data and of the options and code that computed them, so an entry can only be
reused for the very same computation. The export's key is the model's weights (each
tensor's hash), its module tree, the source files of its module classes, the input shape, opset
and the export code; the export stage verifies the file again against the model on real images,
and exports afresh when it disagrees (`stages/export.py`). --no-cache reuses nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from hadmc_deploy.cache import code_hash, hash_json, tensor_hashes, tool_versions
from hadmc_deploy.fileio import atomic_path, sha256_file, user_cache_root, write_json_atomic

T = TypeVar("T")

#: entries of each kind kept (the least recently used go first): an export holds the model's
#: weights (45 MB for a ResNet-18), an INT8 graph a quarter of that, the others are small ...
KEEP = {"export": 8, "quantized": 16, "ranges": 64, "heldout": 64, "score": 256}
#: ... and at most this many bytes of each kind (the most recent entry is always kept)
KEEP_BYTES = 2 << 30
#: the file naming an entry's files (with their hashes) and its record
ENTRY_FILE = "entry.json"


def store() -> Path:
    """Where reused work is kept ($HADMC_CACHE/reuse, else the user's cache folder)."""
    return user_cache_root() / "reuse"


def model_key(model: nn.Module, input_shape: tuple[int, ...], opset: int) -> str:
    """What an export of `model` depends on: weights, module tree (with each module's settings and
    plain attributes), the source of its module classes, the input shape and opset, the export code
    and libraries. What this misses (code outside those classes' files) the export stage's check on
    real images catches: a file that disagrees with the model is exported again."""
    state = model.state_dict()
    sources = sorted({path for m in model.modules() if (path := _source_file(type(m)))})
    return hash_json({
        "weights": tensor_hashes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}),
        "other_state": {k: repr(v) for k, v in state.items() if not isinstance(v, torch.Tensor)},
        "tree": repr(model),
        "attributes": {name: _plain_attributes(m) for name, m in model.named_modules()},
        "sources": {path: sha256_file(path) for path in sources},
        "input_shape": list(input_shape[1:]), "opset": opset,
        "code": code_hash(["hadmc_deploy.export"]), "versions": tool_versions(),
    })


def _plain_attributes(module: nn.Module) -> dict[str, Any]:
    """A module's public attributes of plain types (a scale or a flag its forward reads), not its
    parameters, buffers or submodules (torch keeps those apart) and not its training flag."""
    return {k: repr(v) for k, v in vars(module).items() if not k.startswith("_") and k != "training" and isinstance(v, (int, float, str, bool, tuple, list, type(None)))}


def _source_file(cls: type) -> str | None:
    try:
        path = inspect.getsourcefile(cls)
    except (TypeError, OSError):  # a builtin or a class defined where no file holds it
        return None
    return path if path and Path(path).is_file() else None


def file_key(kind: str, onnx_path: str | Path, **options: Any) -> str:
    """Key of work on one ONNX file: its bytes, the `options` (data hashes included) and the code."""
    modules = {"ranges": ["hadmc_deploy.calibration.collect"], "heldout": ["hadmc_deploy.calibration.verify_qdq"],
               "quantized": ["hadmc_deploy.calibration.quantize"], "score": ["hadmc_deploy.build.metric"]}[kind]
    return hash_json({"onnx": sha256_file(onnx_path), "options": options, "code": code_hash(modules), "versions": tool_versions()})


def _entry(kind: str, key: str) -> Path:
    return store() / kind / key[:40]


def _touch(path: Path) -> None:
    """Mark an entry used now (eviction drops the least recently used)."""
    with contextlib.suppress(OSError):  # a read-only cache still serves what it holds
        os.utime(path)


def _evict(kind: str) -> None:
    """Drop the least recently used entries of `kind` beyond KEEP[kind]."""
    entries = sorted((p for p in (store() / kind).glob("*") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for index, entry in enumerate(entries):
        total += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()) if entry.is_dir() else entry.stat().st_size
        if index == 0 or (index < KEEP[kind] and total <= KEEP_BYTES):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def reused(kind: str, key: str, make: Callable[[Path], None], read: Callable[[Path], T], suffix: str) -> tuple[T, bool]:
    """(what `read` gives of the stored file for `key`, whether an earlier build had made it): the
    file `make(path)` writes, made and stored when there was none or `read` failed on it."""
    path = _entry(kind, key).with_suffix(suffix)
    if path.is_file():
        try:
            value = read(path)
        except Exception:  # noqa: BLE001 - whatever a damaged entry makes the reader raise: made again
            pass
        else:
            _touch(path)
            return value, True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            make(tmp)
    except OSError:  # a cache folder that cannot be written: the work is done, not kept
        with tempfile.TemporaryDirectory(prefix="hadmc-reuse-") as folder:
            unkept = Path(folder) / path.name
            make(unkept)
            return read(unkept), False
    _evict(kind)
    return read(path), False


def stored_files(kind: str, key: str) -> tuple[dict[str, Path], dict[str, Any]] | None:
    """({file name: stored path}, the record stored with them) for `key`, or None when there is no
    whole entry (a file missing, truncated or replaced is not trusted)."""
    folder = _entry(kind, key)
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        files = {name: folder / name for name in entry["files"]}
        if any(sha256_file(path) != entry["files"][name] for name, path in files.items()):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    _touch(folder)
    return files, entry["record"]


def store_files(kind: str, key: str, files: list[Path], record: dict[str, Any]) -> None:
    """Keep copies of `files` (by name) and `record` for later builds; the entry file, written
    last, lists each file's hash."""
    folder = _entry(kind, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            with atomic_path(folder / path.name) as tmp:
                shutil.copyfile(path, tmp)
        write_json_atomic(folder / ENTRY_FILE, {"files": {path.name: sha256_file(path) for path in files}, "record": record})
    except OSError:  # a cache folder that cannot be written (read-only, full): nothing kept, nothing lost
        return
    _evict(kind)


def save_arrays(arrays: list[np.ndarray], path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, *arrays)


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def array_sha256(x: np.ndarray) -> str:
    """A key for images: their shape, dtype and bytes (a view, not a copy)."""
    digest = hashlib.sha256(f"{x.shape}|{x.dtype}|".encode())
    digest.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return digest.hexdigest()
