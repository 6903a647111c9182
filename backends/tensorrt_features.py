"""What the installed TensorRT can do, found by feature checks, and the precision path that follows.

Why feature checks (`hasattr`) rather than parsing `trt.__version__`: TensorRT
removes APIs on a schedule that does not line up with version numbers users
recognise (implicit calibration deprecated in 10.1, gone in 11; EXPLICIT_BATCH
needed in 8.x, ignored in 10, gone in 11; precision builder flags gone in 11).
Asking the module for the attribute we are about to call is the one test that
cannot be wrong. This module takes the `tensorrt` module as an argument and
imports nothing heavy, so it is tested on any machine with a stand-in module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hadmc_deploy.errors import UsageError

#: the oldest release whose Python API we use throughout (I/O tensor API, execute_async_v3,
#: set_memory_pool_limit, build_serialized_network): named in "too old" messages.
MIN_VERSION_TEXT = "8.6"


@dataclass(frozen=True)
class TrtFeatures:
    version: str
    #: BuilderFlag.INT8/FP16 exist: precision chosen by flags (8.6-10.x).
    weak_typing: bool
    #: IInt8EntropyCalibrator2 + BuilderFlag.INT8: implicit calibration (8.6-10.x).
    implicit_calibration: bool
    minmax_calibrator: bool
    #: NetworkDefinitionCreationFlag.STRONGLY_TYPED exists (9.x/10.x opt-in; 11 always on).
    strongly_typed_flag: bool
    #: implicit-batch networks still exist, so ONNX parsing needs EXPLICIT_BATCH (before 10).
    needs_explicit_batch: bool
    hardware_compatibility: bool
    timing_cache: bool
    engine_inspector: bool
    missing: tuple[str, ...] = field(default=())

    @property
    def strongly_typed_only(self) -> bool:
        """No weak typing left: every network is strongly typed (TensorRT 11+)."""
        return not self.weak_typing

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "strongly_typed_only": self.strongly_typed_only}


#: API the backend cannot work without: (owner attribute path, what it is for).
_REQUIRED = (
    ("Builder", "build_serialized_network"),
    ("IBuilderConfig", "set_memory_pool_limit"),
    ("ICudaEngine", "num_io_tensors"),
    ("IExecutionContext", "execute_async_v3"),
    ("IExecutionContext", "set_input_shape"),
    ("IExecutionContext", "set_tensor_address"),
    ("OnnxParser", "parse"),
    ("Runtime", "deserialize_cuda_engine"),
)


def _has(trt: Any, owner: str, attr: str) -> bool:
    obj = getattr(trt, owner, None)
    return obj is not None and hasattr(obj, attr)


def detect_features(trt: Any) -> TrtFeatures:
    builder_flags = getattr(trt, "BuilderFlag", None)
    net_flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    weak = builder_flags is not None and hasattr(builder_flags, "INT8") and hasattr(builder_flags, "FP16")
    missing = tuple(f"{owner}.{attr}" for owner, attr in _REQUIRED if not _has(trt, owner, attr))
    return TrtFeatures(
        version=str(getattr(trt, "__version__", "unknown")),
        weak_typing=weak,
        implicit_calibration=weak and hasattr(trt, "IInt8EntropyCalibrator2") and _has(trt, "IBuilderConfig", "int8_calibrator"),
        minmax_calibrator=weak and hasattr(trt, "IInt8MinMaxCalibrator"),
        strongly_typed_flag=net_flags is not None and hasattr(net_flags, "STRONGLY_TYPED"),
        # Builder.max_batch_size belongs to implicit-batch mode, removed in TensorRT 10
        # together with the need for EXPLICIT_BATCH (ignored in 10, gone in 11).
        needs_explicit_batch=net_flags is not None and hasattr(net_flags, "EXPLICIT_BATCH") and _has(trt, "Builder", "max_batch_size"),
        hardware_compatibility=hasattr(trt, "HardwareCompatibilityLevel") and _has(trt, "IBuilderConfig", "hardware_compatibility_level"),
        timing_cache=_has(trt, "IBuilderConfig", "create_timing_cache"),
        engine_inspector=_has(trt, "ICudaEngine", "create_engine_inspector"),
        missing=missing,
    )


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision on this TensorRT: which ONNX, which flags, which calibrator."""

    precision: str
    #: a short name recorded in metadata: fp32, fp16-flag, fp16-typed, explicit-qdq-flags,
    #: explicit-qdq-strongly-typed, implicit-calibrator-entropy, implicit-calibrator-minmax.
    path: str
    #: which ONNX graph to parse: "float", "fp16-typed" (float graph cast to FP16 inside),
    #: "qdq" (the INT8 stage's QDQ graph) or "qdq-fp16-typed".
    onnx_kind: str
    network_flags: tuple[str, ...] = ()
    builder_flags: tuple[str, ...] = ()
    calibrator: str | None = None  # "entropy" | "minmax"
    strongly_typed: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_precision(features: TrtFeatures, precision: str, int8_mode: str = "qdq", *, fp16_rest: bool = True, calibrator: str = "entropy") -> PrecisionPlan:
    """Choose the precision path for `precision` on the TensorRT described by `features`.

    `fp16_rest`: let the layers an INT8 graph leaves unquantized run in FP16 (the T4
    profile allows it). `calibrator`: "entropy" (IInt8EntropyCalibrator2) or "minmax".
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"unknown precision {precision!r}", hint="use int8, fp16 or fp32")
    if int8_mode not in ("qdq", "calibrator"):
        raise UsageError(f"unknown --int8-mode {int8_mode!r}", hint="use qdq or calibrator")
    base_net = ("EXPLICIT_BATCH",) if features.needs_explicit_batch else ()
    if precision == "fp32":
        return PrecisionPlan("fp32", "fp32", "float", base_net, strongly_typed=features.strongly_typed_only)
    if precision == "fp16":
        if features.weak_typing:
            return PrecisionPlan("fp16", "fp16-flag", "float", base_net, ("FP16",))
        return PrecisionPlan(
            "fp16", "fp16-typed", "fp16-typed", (), strongly_typed=True,
            notes=("strongly typed TensorRT has no FP16 flag: the float graph is cast to FP16 (I/O kept FP32)",),
        )
    if int8_mode == "calibrator":
        if not features.implicit_calibration:
            raise UsageError(
                f"TensorRT {features.version} has no implicit INT8 calibration (removed in TensorRT 11)",
                hint="use --int8-mode qdq with the QDQ ONNX from the INT8 stage",
            )
        if calibrator not in ("entropy", "minmax"):
            raise UsageError(f"unknown calibrator {calibrator!r}", hint="use entropy or minmax")
        if calibrator == "minmax" and not features.minmax_calibrator:
            raise UsageError(f"TensorRT {features.version} has no IInt8MinMaxCalibrator", hint="use the entropy calibrator")
        flags = ("INT8", "FP16") if fp16_rest else ("INT8",)
        return PrecisionPlan("int8", f"implicit-calibrator-{calibrator}", "float", base_net, flags, calibrator=calibrator)
    if features.weak_typing:
        # TensorRT 8.6-10.x: a QDQ graph fixes the INT8 layers; the INT8 flag lets them
        # run INT8 and FP16 lets the unquantized rest pick half-precision kernels.
        flags = ("INT8", "FP16") if fp16_rest else ("INT8",)
        return PrecisionPlan("int8", "explicit-qdq-flags", "qdq", base_net, flags)
    return PrecisionPlan(
        "int8", "explicit-qdq-strongly-typed", "qdq-fp16-typed" if fp16_rest else "qdq", (), strongly_typed=True,
        notes=("strongly typed: INT8 where the graph has Q/DQ; the rest in the graph's own float type",),
    )


def flag_bits(enum: Any, names: tuple[str, ...]) -> int:
    """`1 << int(enum.NAME)` summed: the bitmask create_network() takes."""
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits
