"""`ActivationRanges`: the one thing calibration hands to the quantizer, saved as scales.json.

Per tensor we keep the chosen clipping threshold `amax` (and, for "auto", the method that chose it) (symmetric INT8 scale =
amax / 127) and the exact observed min/max (asymmetric uint8 forms use them, clipped to
[-amax, amax]). The method, sample count and the sha256 of the model and of the data
make the file a cache entry: `load_or_collect` reuses it only when all of them match.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hadmc_deploy.errors import DataError
from hadmc_deploy.fileio import write_json_atomic

if TYPE_CHECKING:
    pass

FORMAT = "hadmc-scales/1"


@dataclass(frozen=True)
class TensorRange:
    amax: float
    min: float
    max: float
    method: str | None = None  # which method chose amax, where ranges mix methods ("auto")

    def clipped(self) -> tuple[float, float]:
        """(rmin, rmax) for asymmetric forms: the observed range clipped to the chosen threshold."""
        return max(self.min, -self.amax), min(self.max, self.amax)


@dataclass
class ActivationRanges:
    tensors: dict[str, TensorRange]
    method: str
    num_samples: int
    model_sha256: str
    data_sha256: str
    percentile: float | None = None
    form: str | None = None  # the INT8 form "auto" measured its per-tensor choice for
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=lambda: _versions())

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def amax(self, name: str) -> float:
        return self.tensors[name].amax

    def amax_by_tensor(self) -> dict[str, float]:
        """What TensorRT's calibration cache takes (scale = amax / 127 per tensor)."""
        return {name: r.amax for name, r in self.tensors.items()}

    def method_counts(self) -> dict[str, int]:
        """How many tensors each method chose (one entry for single-method ranges)."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.method or self.method] = counts.get(t.method or self.method, 0) + 1
        return counts

    def scaled(self, factor: float) -> ActivationRanges:
        """Every range multiplied by `factor` (tests break calibration on purpose with it)."""
        tensors = {n: TensorRange(t.amax * factor, t.min * factor, t.max * factor, t.method) for n, t in self.tensors.items()}
        return ActivationRanges(tensors, self.method, self.num_samples, self.model_sha256, self.data_sha256, self.percentile, self.form)

    def matches(self, model_sha256: str, data_sha256: str, method: str, num_samples: int, percentile: float | None, form: str | None = None) -> bool:
        return (
            self.model_sha256 == model_sha256
            and self.data_sha256 == data_sha256
            and self.method == method
            and self.num_samples == num_samples
            and (method not in ("percentile", "auto") or self.percentile == percentile)
            and (method != "auto" or self.form == form)
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["format"] = FORMAT
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scales.json") -> ActivationRanges:
        if data.get("format") != FORMAT:
            raise DataError(f"{source} is not a hadmc scales file (format {data.get('format')!r})", hint="delete it to recalibrate")
        try:
            tensors = {name: TensorRange(float(t["amax"]), float(t["min"]), float(t["max"]), t.get("method")) for name, t in data["tensors"].items()}
            return cls(
                tensors=tensors,
                method=str(data["method"]),
                num_samples=int(data["num_samples"]),
                model_sha256=str(data["model_sha256"]),
                data_sha256=str(data["data_sha256"]),
                percentile=data.get("percentile"),
                form=data.get("form"),
                created=str(data.get("created", "")),
                versions=dict(data.get("versions", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source} is incomplete or corrupt ({exc})", hint="delete it to recalibrate") from exc

    def save(self, path: str | Path) -> Path:
        """Write scales.json atomically (a reader never sees half a file)."""
        bad = [n for n, t in self.tensors.items() if not all(math.isfinite(v) for v in (t.amax, t.min, t.max))]
        if bad:
            raise DataError(f"range of tensor {bad[0]!r} is not finite; refusing to save it")
        write_json_atomic(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ActivationRanges:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DataError(f"scales file {path} does not exist") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read scales file {path}: {exc}", hint="delete it to recalibrate") from exc
        return cls.from_dict(data, str(path))


def _versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime

    return {"python": platform.python_version(), "numpy": numpy.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
