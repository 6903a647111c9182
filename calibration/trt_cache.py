"""TensorRT's INT8 calibration cache: the text file `IInt8Calibrator.write_calibration_cache` writes.

Why we write it ourselves: the activation ranges are collected on the CPU (ONNX
Runtime, real calibration data) where TensorRT cannot run; writing them in
TensorRT's own cache format lets a GPU host build an implicitly calibrated
engine from them (`read_calibration_cache`) without calibrating again.

The format, as TensorRT writes it:

    TRT-8601-EntropyCalibration2
    input: 3c010a14
    /conv1/Conv_output_0: 3d2a8f5c

The first line is `TRT-<NV_TENSORRT_VERSION>-<algorithm>`; the version integer
is major*1000 + minor*100 + patch before TensorRT 10 (8.6.1 -> 8601) and
major*10000 + minor*100 + patch from 10 on (10.3.0 -> 100300). Each further line
is `<tensor name>: <scale>` where the scale is amax/127 (symmetric INT8) written
as the IEEE-754 float32 bit pattern in hex, most significant byte first
(1/127 -> `3c010204`). Tensor names may themselves contain ": " (TensorRT's
"(Unnamed Layer* 4) [Constant]_output" names do), so lines split at the LAST ": ".
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import DataError
from hadmc_deploy.fileio import write_text_atomic

#: header algorithm names by our short names: TensorRT's spelling where TensorRT has the
#: algorithm; for our percentile and per-tensor ("auto") ranges, which no TensorRT calibrator
#: computes, an honest name of the same form. TensorRT reads a cache only under its own
#: calibrator's name, so backends/tensorrt_calibrator.py rewrites the header on load
#: (`retarget_header`); for trtexec, rewrite the first line to its calibrator's name.
ALGORITHMS = {
    "entropy": "EntropyCalibration2",
    "entropy2": "EntropyCalibration2",
    "entropy1": "EntropyCalibration",
    "minmax": "MinMaxCalibration",
    "legacy": "LegacyCalibration",
    "percentile": "PercentileCalibration",
    "auto": "PerTensorCalibration",
}
INT8_MAX = 127.0
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{1,8}$")


def version_number(trt_version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION integer for a version string ("8.6.1" -> 8601, "10.3" -> 100300)."""
    parts = [int(p) for p in re.findall(r"\d+", str(trt_version))[:3]]
    if not parts:
        raise DataError(f"TensorRT version {trt_version!r} has no numbers", hint="pass e.g. '10.3.0'")
    major, minor, patch = (parts + [0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def header_line(trt_version: str = "10.0", algo: str = "EntropyCalibration2") -> str:
    algo_name = ALGORITHMS.get(algo.lower(), algo)
    return f"TRT-{version_number(trt_version)}-{algo_name}"


def scale_to_hex(scale: float) -> str:
    """The float32 bit pattern of `scale` as 8 hex digits, big-endian (TensorRT's spelling)."""
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text.rjust(8, "0")))[0]


def _amax_of(value: Any) -> float:
    """Accept a bare amax or an `ActivationRanges`-style entry (`.amax`, or a dict with "amax"/"min"/"max")."""
    if isinstance(value, Mapping):
        if "amax" in value:
            return float(value["amax"])
        return max(abs(float(value["min"])), abs(float(value["max"])))
    if hasattr(value, "amax"):
        return float(value.amax)
    return float(value)


def _amax_table(ranges_or_amax: Any) -> Mapping[str, Any]:
    """An `ActivationRanges` object (its tensor table) or a plain mapping tensor -> amax."""
    if isinstance(ranges_or_amax, Mapping):
        return ranges_or_amax
    if callable(getattr(ranges_or_amax, "amax_by_tensor", None)):
        return ranges_or_amax.amax_by_tensor()
    for attr in ("amax", "tensors", "ranges"):
        table = getattr(ranges_or_amax, attr, None)
        if isinstance(table, Mapping):
            return table
    raise DataError(f"cannot read activation ranges from a {type(ranges_or_amax).__name__}", hint="pass a dict tensor -> amax")


#: the smallest amax written (the QDQ writer's floor): a zero range must not become scale 0.
MIN_AMAX = 1e-12


def algorithm_of(ranges_or_amax: Any, algo: str | None = None) -> str:
    """The header's algorithm: `algo` when given, else the method the ranges were collected with.

    A plain tensor -> amax mapping carries no method; it is labelled EntropyCalibration2,
    TensorRT's default calibrator.
    """
    if algo is not None:
        return algo
    method = getattr(ranges_or_amax, "method", None)
    return ALGORITHMS.get(str(method), "EntropyCalibration2") if method else "EntropyCalibration2"


def render_cache(ranges_or_amax: Any, trt_version: str = "10.0", algo: str | None = None) -> str:
    """The cache text for tensor -> amax (scale = amax / 127); the header names the ranges' method."""
    lines = [header_line(trt_version, algorithm_of(ranges_or_amax, algo))]
    for name, value in _amax_table(ranges_or_amax).items():
        amax = _amax_of(value)
        if not math.isfinite(amax) or amax < 0:
            raise DataError(f"tensor {name!r} has amax {amax}; calibration produced a non-finite or negative range")
        if "\n" in name:
            raise DataError(f"tensor name {name!r} contains a newline; the cache format cannot hold it")
        # A zero range (a tensor that is always 0) would write scale 0, which TensorRT divides by:
        # floor it as the QDQ writer does (calibration/qdq.py, add_residual_qdq).
        lines.append(f"{name}: {scale_to_hex(max(amax, MIN_AMAX) / INT8_MAX)}")
    return "\n".join(lines) + "\n"


def write_cache(
    path: str | Path,
    ranges_or_amax: Any,
    trt_version: str = "10.0",
    algo: str | None = None,
) -> Path:
    """Write a TensorRT calibration cache for tensor -> amax; returns the path (written atomically)."""
    path = Path(path)
    write_text_atomic(path, render_cache(ranges_or_amax, trt_version, algo))
    return path


def parse_cache(text: str, source: str = "calibration cache") -> tuple[str, dict[str, float]]:
    """(header, tensor -> scale) from cache text; a malformed line raises DataError naming it."""
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if not lines or not _HEADER.match(lines[0].strip()):
        first = lines[0][:60] if lines else "an empty file"
        raise DataError(f"{source} does not start with a TensorRT header like TRT-100300-EntropyCalibration2 (found {first!r})")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, hex_text = line.rpartition(": ")
        hex_text = hex_text.strip()
        if not sep or not name or not _HEX.match(hex_text):
            raise DataError(f"{source} line {number} is not 'tensor: hexscale' ({line[:80]!r})")
        scales[name] = hex_to_scale(hex_text)
    return lines[0].strip(), scales


def read_cache(path: str | Path) -> dict[str, float]:
    """Tensor -> scale (amax / 127) from a TensorRT calibration cache."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError as exc:
        raise DataError(f"calibration cache {path} does not exist", hint="run the INT8 calibration stage first") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"calibration cache {path} is not a text file") from exc
    return parse_cache(text, str(path))[1]


def read_header(path: str | Path) -> tuple[int, str]:
    """(version number, algorithm name) from a cache's first line."""
    header, _ = parse_cache(Path(path).read_text(), str(path))
    match = _HEADER.match(header)
    assert match is not None  # parse_cache checked it
    return int(match.group(1)), match.group(2)


def retarget_header(cache: bytes, trt_version: str, algo: str) -> bytes:
    """The same scales under the header a given TensorRT version and calibrator expect.

    Why: TensorRT ignores (and recalibrates over) a cache whose header names another
    version or another calibrator algorithm. The scales in our cache were computed
    by our own CPU calibration, not by either algorithm, so the tag carries no
    information worth keeping; the local one is written instead.
    """
    text = cache.decode("utf-8")
    parse_cache(text)  # refuse a malformed cache here rather than inside TensorRT
    body = text.split("\n", 1)[1] if "\n" in text else ""
    return (header_line(trt_version, algo) + "\n" + body).encode("utf-8")
