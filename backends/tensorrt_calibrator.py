"""Implicit INT8 calibration for TensorRT 8.6-10.x: a calibrator fed from our calibration data.

The calibrator class has to subclass `trt.IInt8EntropyCalibrator2` (or
`IInt8MinMaxCalibrator`), which exist only where TensorRT is installed, so the
class is defined inside `make_calibrator` at call time: importing this module
never needs TensorRT. Batches reach the GPU through torch CUDA tensors (no
pycuda). The cache side reads the `calibration.cache` our CPU calibration wrote
and puts the local TensorRT version and algorithm in its header, so TensorRT
uses our scales instead of calibrating again.

TensorRT calls these methods through pybind11 trampolines (`pyInt8.cpp`) that catch
every exception, print it to stderr and return "no batch" / "no cache": an error
raised here never reaches the caller. So each method records its first error on
the calibrator (`.error`) and `tensorrt_build.build_engine` re-raises it after the
build; shapes and the cache are also checked before the build starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.calibration import trt_cache
from hadmc_deploy.errors import DataError, UsageError
from hadmc_deploy.fileio import write_bytes_atomic

#: where calibration batches live: TensorRT reads device pointers (tests of the plumbing use "cpu").
CALIBRATION_DEVICE = "cuda"
#: TensorRT's header algorithm name for each calibrator class we offer.
HEADER_ALGO = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}
BASE_CLASS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


class CalibrationCacheFile:
    """The cache half of a calibrator: what `read_calibration_cache` / `write_calibration_cache` do."""

    def __init__(self, path: str | Path | None, trt_version: str, algo: str = "entropy") -> None:
        if algo not in HEADER_ALGO:
            raise UsageError(f"unknown calibrator {algo!r}", hint="use entropy or minmax")
        self.path = Path(path) if path is not None else None
        self.trt_version = trt_version
        self.algo = algo
        self.read_from_file = False

    def read(self) -> bytes | None:
        """The cache bytes with this TensorRT's header, or None (TensorRT then calibrates on the data)."""
        if self.path is None or not self.path.is_file():
            return None
        data = self.path.read_bytes()
        try:
            out = trt_cache.retarget_header(data, self.trt_version, HEADER_ALGO[self.algo])
        except (DataError, UnicodeDecodeError) as exc:
            raise DataError(f"calibration cache {self.path} is not a TensorRT calibration cache: {exc}") from exc
        self.read_from_file = True
        return out

    def write(self, cache: Any) -> None:
        """Store what TensorRT calibrated (bytes-like), atomically, so the next build skips calibration."""
        if self.path is not None:
            write_bytes_atomic(self.path, bytes(cache))


class BatchFeeder:
    """Full batches of the calibration inputs copied into one device buffer; None when done.

    TensorRT calibrates on fixed-shape batches (the calibration profile), so a
    trailing partial batch is dropped rather than padded with fake samples.
    """

    def __init__(self, x: np.ndarray, batch_size: int, *, device: str | None = None, max_batches: int | None = None,
                 on_batch: Callable[[], None] | None = None) -> None:
        import torch

        if x.ndim != 4:
            raise DataError(f"calibration inputs must be N,C,H,W; got shape {tuple(x.shape)}")
        if batch_size < 1 or x.shape[0] < batch_size:
            raise DataError(f"calibration needs at least one full batch of {batch_size}; the data has {x.shape[0]} samples",
                            hint="pass more calibration samples or a smaller calibration batch")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch_size = batch_size
        total = self.x.shape[0] // batch_size
        self.num_batches = min(total, max_batches) if max_batches else total
        self.index = 0
        self.on_batch = on_batch
        self.buffer = torch.empty((batch_size, *self.x.shape[1:]), dtype=torch.float32, device=device or CALIBRATION_DEVICE)
        self._torch = torch

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch_size, *self.x.shape[1:])

    def next_pointer(self) -> int | None:
        if self.index >= self.num_batches:
            return None
        start = self.index * self.batch_size
        chunk = self._torch.from_numpy(self.x[start : start + self.batch_size])
        self.buffer.copy_(chunk)
        if self.buffer.is_cuda:
            # TensorRT reads the buffer on its own stream: the copy must have landed.
            self._torch.cuda.current_stream().synchronize()
        self.index += 1
        if self.on_batch is not None:
            self.on_batch()
        return int(self.buffer.data_ptr())


def make_calibrator(
    trt: Any,
    *,
    input_name: str,
    cache_path: str | Path | None,
    data: np.ndarray | None = None,
    batch_size: int = 32,
    algo: str = "entropy",
    device: str | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[], None] | None = None,
) -> Any:
    """An instance of a `trt.IInt8EntropyCalibrator2` (or MinMax) subclass over `data` and `cache_path`.

    With a readable cache and no data, TensorRT takes the scales from the cache.
    """
    if algo not in BASE_CLASS:
        raise UsageError(f"unknown calibrator {algo!r}", hint="use entropy or minmax")
    base = getattr(trt, BASE_CLASS[algo], None)
    if base is None:
        raise UsageError(f"TensorRT {getattr(trt, '__version__', '?')} has no {BASE_CLASS[algo]}",
                         hint="use --int8-mode qdq (explicit quantization)")
    cache = CalibrationCacheFile(cache_path, str(getattr(trt, "__version__", "10.0")), algo)
    if data is None and (cache.path is None or not cache.path.is_file()):
        raise UsageError("calibrator mode needs calibration data or an existing calibration.cache",
                         hint="pass --calib-cache FILE (written by the INT8 stage) or --calib DATA")
    feeder = BatchFeeder(data, batch_size, device=device, max_batches=max_batches, on_batch=on_batch) if data is not None else None

    class HadmcCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds our calibration batches; reads and writes calibration.cache; keeps the first error it hit."""

        def __init__(self) -> None:
            base.__init__(self)  # pybind11 trampolines need the base initialised explicitly
            self.cache = cache
            self.feeder = feeder
            self.input_name = input_name
            self.error: Exception | None = None

        def _record(self, exc: Exception) -> None:
            if self.error is None:
                self.error = exc

        def get_batch_size(self) -> int:
            # Explicit-batch networks take the batch from the calibration profile;
            # TensorRT expects 1 here in that case.
            return 1

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            try:
                if self.feeder is None:
                    return None
                if list(names) != [self.input_name]:
                    raise DataError(f"the calibrator feeds one input {self.input_name!r}; TensorRT asked for {list(names)}")
                pointer = self.feeder.next_pointer()
                return None if pointer is None else [pointer]
            except Exception as exc:  # the trampoline would swallow it: keep it for build_engine
                self._record(exc)
                return None

        def read_calibration_cache(self) -> bytes | None:
            try:
                return self.cache.read()
            except Exception as exc:
                self._record(exc)
                return None

        def write_calibration_cache(self, data: Any) -> None:
            try:
                self.cache.write(data)
            except Exception as exc:
                self._record(exc)

    return HadmcCalibrator()
