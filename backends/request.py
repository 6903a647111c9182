"""What every backend build takes: one frozen, typed request (no option dicts, no branching on backend names).

The caller states facts (the float graph, the target, the INT8 inputs it has:
ranges, a QDQ graph already rendered in the target's form, a TensorRT calibration
cache, calibration data, layers kept in float) and each backend chooses its own
INT8 input from them: ONNX Runtime takes a QDQ graph only in its own form and
placement and otherwise renders one from the ranges; TensorRT takes the QDQ graph
(explicit quantization) or, on 8.6-10.x, a calibrator over the cache or the data.
Backend-specific tuning lives in one typed section per backend; a backend ignores
the other's section.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hadmc_deploy.errors import UsageError
from hadmc_deploy.targets import TargetProfile

if TYPE_CHECKING:  # typing only: importing them here would load ONNX Runtime's helpers for every backend
    from hadmc_deploy.calibration.ranges import ActivationRanges
    from hadmc_deploy.data import ArrayDataset
    from hadmc_deploy.ui import UI

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("auto", "qdq", "calibrator")
CALIBRATORS = ("entropy", "minmax")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus")
#: trt.ProfilingVerbosity members by our lower-case name.
PROFILING_VERBOSITY = ("detailed", "layer_names_only", "none")


@dataclass(frozen=True)
class OrtBuildOptions:
    """ONNX Runtime session and offline-optimization settings recorded in the artifact."""

    #: intra-op threads (None: this machine's physical cores).
    threads: int | None = None
    #: session graph optimization level (None: the backend default, "all").
    opt_level: str | None = None
    #: save the model after ORT's offline optimization at this level (None: a byte copy; docs/export.md).
    offline_opt: str | None = None


@dataclass(frozen=True)
class TrtBuildOptions:
    """TensorRT builder settings. Defaults follow the target profile where one applies."""

    #: "auto": the QDQ graph when the request has one (or ranges to render it), else the implicit
    #: calibrator where this TensorRT still has it; "qdq" or "calibrator" force a path.
    int8_mode: str = "auto"
    calibrator: str = "entropy"
    #: samples per calibration batch (implicit calibration from data).
    calib_batch: int = 32
    #: optimization profile (MIN, OPT, MAX) batch; None: from the target's batch sizes.
    batch: tuple[int, int, int] | None = None
    workspace_mb: int = 1024
    #: INT8 builds: let unquantized layers run FP16 (None: when the target lists fp16).
    fp16_rest: bool | None = None
    #: allow TF32 in FP32 layers (TensorRT enables it by default on Ampere+; FP32 then is not FP32).
    tf32: bool = False
    #: persistent timing cache file (None: one per GPU model and TensorRT version under the cache dir).
    timing_cache: Path | None = None
    use_timing_cache: bool = True
    hardware_compatibility: str = "none"
    builder_optimization_level: int | None = None
    #: "detailed" keeps each fused layer's ONNX node names, precisions and tactics in the engine (the
    #: per-layer profiler and the engine inspector read them; documented as negligible at run time);
    #: "layer_names_only" keeps names only; "none" leaves layers reported as decimal indices.
    profiling_verbosity: str = "detailed"


@dataclass(frozen=True)
class BuildRequest:
    """One artifact to build: `Backend.build(request)`."""

    #: the verified float ONNX graph.
    onnx_path: Path
    precision: str
    out_dir: Path
    target: TargetProfile
    #: activation ranges (INT8): ORT renders its QDQ graph from them, TensorRT renders one or writes a cache.
    ranges: ActivationRanges | None = None
    #: a QDQ graph already rendered in the target's form (`write_qdq` records form and placement in it).
    qdq_graph: Path | None = None
    #: a TensorRT calibration cache (implicit calibration, TensorRT 8.6-10.x).
    calibration_cache: Path | None = None
    #: node names kept in float when a backend renders the QDQ graph itself.
    float_nodes: tuple[str, ...] = ()
    #: calibration inputs (N,C,H,W) for a calibrator that measures on the device.
    calibration_data: ArrayDataset | Any | None = None
    #: preprocessing recorded in the artifact so serving code feeds the model as it was evaluated.
    preprocess: dict[str, Any] | None = None
    #: the export's numeric check, when the caller has it (else read from the ONNX).
    verification: dict[str, Any] | None = None
    #: free-form facts the caller wants in metadata.json (plan, variant name, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    ui: UI | None = None
    ort: OrtBuildOptions = field(default_factory=OrtBuildOptions)
    trt: TrtBuildOptions = field(default_factory=TrtBuildOptions)

    def __post_init__(self) -> None:
        # Paths as given (str or Path) become Path once, so backends never convert.
        for name in ("onnx_path", "out_dir", "qdq_graph", "calibration_cache"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "float_nodes", tuple(self.float_nodes))

    def with_changes(self, **changes: Any) -> BuildRequest:
        """A copy with some fields replaced (the request itself never changes)."""
        return replace(self, **changes)

    def validate(self) -> None:
        """Checks every backend shares; raises UsageError naming the field."""
        if not isinstance(self.target, TargetProfile):
            raise UsageError(f"BuildRequest.target must be a TargetProfile, got {type(self.target).__name__}",
                             hint="hadmc_deploy.targets.get_target(name)")
        if not self.onnx_path.is_file():
            raise UsageError(f"ONNX file {self.onnx_path} does not exist")
        if self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}", hint="use int8, fp16 or fp32")
        for name in ("qdq_graph", "calibration_cache"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise UsageError(f"{name} {path} does not exist")
        if any(not isinstance(n, str) or not n for n in self.float_nodes):
            raise UsageError("float_nodes must be ONNX node names (non-empty strings)")
        t = self.trt
        if t.int8_mode not in INT8_MODES:
            raise UsageError(f"unknown INT8 mode {t.int8_mode!r}", hint=f"use one of {', '.join(INT8_MODES)}")
        if t.calibrator not in CALIBRATORS:
            raise UsageError(f"unknown calibrator {t.calibrator!r}", hint="use entropy or minmax")
        if t.calib_batch < 1 or t.workspace_mb < 1:
            raise UsageError(f"calib_batch and workspace_mb must be >= 1 (got {t.calib_batch}, {t.workspace_mb})")
        if t.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise UsageError(f"unknown hardware compatibility {t.hardware_compatibility!r}", hint="use none or ampere_plus")
        if t.profiling_verbosity not in PROFILING_VERBOSITY:
            raise UsageError(f"unknown profiling verbosity {t.profiling_verbosity!r}", hint=f"use one of {', '.join(PROFILING_VERBOSITY)}")
        if t.batch is not None and (len(t.batch) != 3 or not 1 <= t.batch[0] <= t.batch[1] <= t.batch[2]):
            raise UsageError(f"batch {t.batch} must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX")
        if self.ort.threads is not None and self.ort.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.ort.threads}")
