"""The one INT8 call, for the build and for library callers: calibrate -> QDQ -> verify (guard) -> TensorRT cache.

`quantize_int8(float_onnx, calib, out_dir, Int8Options(...), eval_data=...)` writes into
`out_dir` (names prefixed by `prefix`, e.g. "baseline_"):
  * `scales.json` - the ranges the QDQ graph uses (collected ranges are reused when the
    model, data, method and form match; after a guard repair, the repaired ranges);
  * `<form>.onnx` - the QDQ graph (e.g. `qdq_u8s8.onnx`), written only once checked;
  * `calibration.cache` - TensorRT's cache of the same ranges, its header naming their method.
The result says, typed, what was measured and whether the graph may be deployed: with a
guard (the default), `deployable` is the guard's verdict; without one, the numeric check
of INT8 against FP32 on held-out calibration samples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hadmc_deploy.calibration.collect import DEFAULT_METHOD, METHODS, calibration_subset, load_or_collect
from hadmc_deploy.calibration.guard import GuardOutcome, GuardSettings, guard_int8
from hadmc_deploy.calibration.observers import DEFAULT_PERCENTILE
from hadmc_deploy.calibration.qdq import DEFAULT_PLACEMENT, FORMS, write_qdq
from hadmc_deploy.calibration.trt_cache import algorithm_of, write_cache
from hadmc_deploy.calibration.verify_qdq import (
    DEFAULT_MIN_SNR_DB,
    DEFAULT_MIN_TOP1_AGREEMENT,
    QdqCheck,
    verify_qdq,
)
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import UsageError
from hadmc_deploy.ui import UI, quiet_ui

SCALES_FILE = "scales.json"
TRT_CACHE_FILE = "calibration.cache"


@dataclass(frozen=True)
class Int8Options:
    """How to quantize. Defaults are the measured best on ONNX Runtime CPU (docs/int8.md)."""

    method: str = DEFAULT_METHOD  # entropy | minmax | percentile | auto (per tensor, held-out error)
    samples: int = 512  # calibration samples for the ranges
    percentile: float = DEFAULT_PERCENTILE
    form: str = "qdq_u8s8"  # qdq_u8s8 (ORT on x86) | qdq_s8s8 (TensorRT, ARM)
    placement: str | None = None  # None: the form's default (calibration/qdq.py)
    per_channel: bool = True  # per-output-channel weight scales
    reduce_range: bool = False  # 7-bit weights (x86 without VNNI: qdq.cpu_reduce_range)
    float_nodes: tuple[str, ...] = ()  # nodes the caller wants left in float
    guard: GuardSettings | None = field(default_factory=GuardSettings)  # None: check only, no repair
    #: held-out calibration samples INT8 is compared to FP32 on: without eval data that comparison
    #: is the guard, and fewer than 299 cannot vouch for a 1-point loss (calibration/guard.py)
    verify_samples: int = 1024
    trt_cache: bool = True
    trt_version: str = "10.0"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}", hint=f"use one of {', '.join(METHODS)}")
        if self.form not in FORMS:
            raise UsageError(f"unknown INT8 form {self.form!r}", hint=f"use one of {', '.join(FORMS)}")
        if self.guard is not None and self.guard.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0, got {self.guard.max_accuracy_drop}")


@dataclass
class Int8Result:
    qdq_path: str
    scales_path: str
    ranges_reused: bool
    form: str
    placement: str
    method: str  # of the final ranges ("auto" after a per-tensor repair)
    method_counts: dict[str, int]  # tensors per method in the final ranges
    num_samples: int
    float_nodes: list[str]
    float_node_reasons: dict[str, str]
    check: QdqCheck  # INT8 vs FP32 on held-out calibration samples
    heldout_source: str  # where those samples came from
    guard: GuardOutcome | None
    deployable: bool
    reason: str
    trt_cache_path: str | None
    trt_cache_header: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def heldout_samples(calib: ArrayDataset, num_samples: int, count: int) -> tuple[np.ndarray, str]:
    """Up to `count` calibration samples the ranges did not see (the rest of the seeded shuffle).

    When the calibration set has nothing left over, its last samples are reused, and the
    source string says so (the check is then less independent).
    """
    order = calib.shuffled_order(0)  # the same shuffle as ArrayDataset.subset
    rest = np.sort(order[num_samples : num_samples + count])
    if len(rest) >= min(count, 16):
        return calib.x[rest], f"{len(rest)} held-out samples of {calib.source}"
    x = calibration_subset(calib, num_samples).x[-count:]
    return x, f"{len(x)} calibration samples of {calib.source} (none held out: pass more than {num_samples} to --calib)"


def quantize_int8(
    float_onnx: str | Path,
    calib: ArrayDataset,
    out_dir: str | Path,
    options: Int8Options = Int8Options(),
    *,
    eval_data: ArrayDataset | None = None,
    prefix: str = "",
    heldout_reference: list[np.ndarray] | None = None,
    ui: UI | None = None,
) -> Int8Result:
    """Calibrate (or reuse `scales.json`), write the QDQ graph, check it against float (and guard it), write the TensorRT cache.
    `heldout_reference`: the float model's outputs on the held-out samples (`heldout_samples`), when the caller has them."""
    ui = ui or quiet_ui()
    options.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scales_path = out_dir / f"{prefix}{SCALES_FILE}"
    qdq_path = out_dir / f"{prefix}{options.form}.onnx"
    placement = options.placement or DEFAULT_PLACEMENT[options.form]
    ranges, reused = load_or_collect(float_onnx, calib, options.method, scales_path, num_samples=options.samples, percentile=options.percentile, form=options.form, ui=ui)
    ui.log(f"{'reused' if reused else 'collected'} {options.method} ranges for {len(ranges)} tensors ({ranges.num_samples} samples) -> {scales_path.name}")
    heldout_x, heldout_source = heldout_samples(calib, options.samples, options.verify_samples)
    guard = None
    reasons: dict[str, str] = {}
    if options.guard is not None:
        guard, final = guard_int8(
            float_onnx, ranges, calib, heldout_x, qdq_path, eval_data=eval_data, settings=options.guard, form=options.form, placement=placement,
            per_channel=options.per_channel, reduce_range=options.reduce_range, float_nodes=list(options.float_nodes),
            num_samples=options.samples, percentile=options.percentile, reference=heldout_reference, ui=ui,
        )
        if final is not ranges:
            final.save(scales_path)  # the ranges the graph was written with, for TensorRT and for the record
            ranges = final
        float_nodes, reasons, check = guard.float_nodes, guard.float_node_reasons, guard.check
        deployable, reason = guard.holds, guard.reason
    else:
        float_nodes = list(options.float_nodes)
        write_qdq(float_onnx, ranges, qdq_path, form=options.form, placement=placement, float_nodes=float_nodes, reduce_range=options.reduce_range, per_channel=options.per_channel)
        check = verify_qdq(float_onnx, qdq_path, heldout_x, min_top1_agreement=DEFAULT_MIN_TOP1_AGREEMENT, min_snr_db=DEFAULT_MIN_SNR_DB, raise_on_failure=False)
        deployable = check.passed
        reason = f"INT8 vs FP32 on {heldout_source}: " + (check.reason or "agrees")
    assert check is not None
    agree = f"top-1 agreement {check.top1_agreement:.1%}, " if check.top1_agreement is not None else ""
    if check.confidence_agreement is not None and check.confidence_agreement != check.top1_agreement:
        agree += f"{check.confidence_agreement:.1%} weighted by FP32 confidence, "
    ui.log(f"checked {qdq_path.name} on {heldout_source}: {agree}output SNR {check.snr_db:.1f} dB")
    if not deployable:
        ui.warn(reason)
    cache_path = cache_header = None
    if options.trt_cache:
        cache_path = str(write_cache(out_dir / f"{prefix}{TRT_CACHE_FILE}", ranges, trt_version=options.trt_version))
        cache_header = algorithm_of(ranges)
    return Int8Result(
        str(qdq_path), str(scales_path), reused, options.form, placement, ranges.method, ranges.method_counts(), ranges.num_samples,
        list(float_nodes), reasons, check, heldout_source, guard, deployable, reason, cache_path, cache_header,
    )
