"""The pipeline's one call for INT8: ranges (cached) -> QDQ graph -> verification -> TensorRT cache.

Writes into `out_dir`: `scales.json` (our ranges, reused when model and data hashes
match), `<form>.onnx` (e.g. `qdq_s8s8.onnx`), and `calibration.cache` (TensorRT's
calibration-cache format, for TensorRT 10's implicit-quantization path).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from hadmc_deploy.calibration.collect import calibration_subset
from hadmc_deploy.calibration.qdq import DEFAULT_PLACEMENT, write_qdq
from hadmc_deploy.calibration.ranges import ActivationRanges, load_or_collect
from hadmc_deploy.calibration.verify_qdq import QdqCheck, verify_qdq
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.ui import UI, quiet_ui

SCALES_FILE = "scales.json"
TRT_CACHE_FILE = "calibration.cache"
VERIFY_SAMPLES = 256


@dataclass
class QuantizeResult:
    qdq_path: str
    scales_path: str
    ranges_reused: bool
    form: str
    placement: str
    method: str
    num_samples: int
    float_nodes: list[str]
    check: QdqCheck | None
    trt_cache_path: str | None
    trt_cache_note: str

    def to_dict(self) -> dict:
        return asdict(self)


def write_trt_cache(ranges: ActivationRanges, path: str | Path, trt_version: str = "10.0") -> tuple[str | None, str]:
    """calibration.cache via the TensorRT engineer's writer; (path or None, what happened)."""
    try:
        from hadmc_deploy.calibration.trt_cache import write_cache
    except ImportError as exc:  # the module lands with the TensorRT backend
        return None, f"calibration.cache not written: {exc}"
    algo = "EntropyCalibration2" if ranges.method == "entropy" else "MinMaxCalibration"
    write_cache(path, ranges.amax_by_tensor(), trt_version=trt_version, algo=algo)
    return str(path), f"TensorRT {trt_version} {algo} cache, scale = amax/127 for {len(ranges)} tensors"


def quantize_for_target(
    float_onnx: str | Path,
    calib: ArrayDataset,
    out_dir: str | Path,
    *,
    form: str = "qdq_s8s8",
    placement: str | None = None,
    method: str = "entropy",
    num_samples: int = 512,
    percentile: float = 99.99,
    float_nodes: Iterable[str] = (),
    reduce_range: bool = False,
    verify: bool = True,
    trt_cache: bool = True,
    ui: UI | None = None,
) -> QuantizeResult:
    """Calibrate (or reuse scales.json), write the QDQ graph in `form`, verify it, write calibration.cache."""
    ui = ui or quiet_ui()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scales_path = out_dir / SCALES_FILE
    ranges, reused = load_or_collect(float_onnx, calib, method, scales_path, num_samples=num_samples, percentile=percentile, ui=ui)
    ui.log(f"{'reused' if reused else 'collected'} {method} ranges for {len(ranges)} tensors ({ranges.num_samples} samples) -> {scales_path}")
    float_nodes = list(float_nodes)
    qdq_path = write_qdq(float_onnx, ranges, out_dir / f"{form}.onnx", form=form, float_nodes=float_nodes, reduce_range=reduce_range, placement=placement)
    check = None
    if verify:
        x = calibration_subset(calib, num_samples).x[:VERIFY_SAMPLES]
        check = verify_qdq(float_onnx, qdq_path, x)
        ui.log(f"verified {qdq_path.name}: top-1 agreement {check.top1_agreement:.1%}, max error {check.max_abs_err:.4g}")
    cache_path, cache_note = (None, "not requested")
    if trt_cache:
        cache_path, cache_note = write_trt_cache(ranges, out_dir / TRT_CACHE_FILE)
    return QuantizeResult(
        str(qdq_path), str(scales_path), reused, form, placement or DEFAULT_PLACEMENT[form], method, ranges.num_samples, float_nodes, check, cache_path, cache_note
    )
