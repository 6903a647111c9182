"""Engine build from ONNX, TensorRT's documented flow, one step per function.

Builder -> create_network(flags) -> OnnxParser (every parser error reported) ->
create_builder_config -> set_memory_pool_limit(WORKSPACE) -> precision flags or
none (strongly typed), TF32 cleared unless asked for -> optimization profile for the dynamic batch -> calibrator
(implicit path only) -> persistent timing cache -> build_serialized_network.
Every call takes the `tensorrt` module as an argument: nothing here imports it,
so `import hadmc_deploy` works anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadmc_deploy.backends.tensorrt_features import PrecisionPlan, flag_bits
from hadmc_deploy.errors import BackendUnavailableError, ExportError
from hadmc_deploy.fileio import write_bytes_atomic
from hadmc_deploy.ui import UI, quiet_ui


@dataclass
class EngineBuildSpec:
    """What one engine build hands TensorRT (the backend derives it from the typed BuildRequest)."""

    onnx_path: Path
    plan: PrecisionPlan
    #: input name -> {"min": shape, "opt": shape, "max": shape}
    profile: dict[str, dict[str, list[int]]]
    workspace_bytes: int = 1 << 30
    timing_cache: Path | None = None
    calibrator: Any = None
    #: input name -> the fixed shape calibration batches have (implicit path only).
    calibration_shapes: dict[str, list[int]] = field(default_factory=dict)
    #: "none" or "ampere_plus" (engines portable across GPUs of compute capability >= 8.0).
    hardware_compatibility: str = "none"
    builder_optimization_level: int | None = None
    #: TensorRT enables TF32 for FP32 layers by default (Ampere+); cleared unless True, as Polygraphy does.
    tf32: bool = False
    #: tensor names the calibration cache gives scales for (implicit path from a cache): layers whose
    #: outputs it does not name get no INT8 scale and run in higher precision; they are listed.
    cache_scales: frozenset[str] | None = None
    #: trt.ProfilingVerbosity member, lower case: "detailed" (default: fused layers named after their
    #: ONNX nodes, which `tensorrt_profile` maps back), "layer_names_only" or "none".
    profiling_verbosity: str = "detailed"


@dataclass
class BuildResult:
    engine: bytes
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    seconds: float
    timing_cache_entries: str = ""
    warnings: list[str] = field(default_factory=list)
    #: layers whose output tensors the calibration cache does not name (None: not checked).
    unscaled_layers: list[str] | None = None


def dtype_name(dtype: Any) -> str:
    """A TensorRT DataType as its enum member name (FLOAT, HALF, INT8, ...)."""
    return str(getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1])


def make_logger(trt: Any) -> Any:
    """A trt.ILogger that keeps errors and warnings, so a failed build can say why in its message."""

    class CollectingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= 1:  # INTERNAL_ERROR, ERROR
                self.errors.append(str(msg))
            elif level == 2:
                self.warnings.append(str(msg))

    return CollectingLogger()


def parser_errors(parser: Any) -> list[str]:
    """Every error the ONNX parser recorded, with the node it names where the API gives one."""
    out = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        where = ""
        node_name = err.node_name() if hasattr(err, "node_name") else ""
        node_op = err.node_operator() if hasattr(err, "node_operator") else ""
        if node_name or node_op:
            where = f"node {node_name or '?'} ({node_op or '?'}): "
        elif hasattr(err, "node") and int(err.node()) >= 0:
            where = f"node #{int(err.node())}: "
        out.append(f"{where}{err.desc()}")
    return out


def parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: PrecisionPlan) -> tuple[Any, Any]:
    network = builder.create_network(flag_bits(trt.NetworkDefinitionCreationFlag, plan.network_flags))
    parser = trt.OnnxParser(network, logger)
    if hasattr(parser, "parse_from_file"):
        ok = parser.parse_from_file(str(onnx_path))  # resolves external weight files beside the model
    else:
        ok = parser.parse(onnx_path.read_bytes(), str(onnx_path))
    errors = parser_errors(parser)
    if not ok or errors:
        listed = "; ".join(errors) or "the parser returned failure without an error record"
        raise ExportError(f"TensorRT's ONNX parser rejected {onnx_path.name} ({len(errors)} error(s)): {listed}",
                          hint="the ONNX must come from `hadmc-deploy export` (opset and ops TensorRT supports)")
    return network, parser


def tensors_of(network: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def describe(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": dtype_name(t.dtype), "shape": [int(d) for d in t.shape]}

    inputs = [describe(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [describe(network.get_output(i)) for i in range(network.num_outputs)]
    return inputs, outputs


def configure(trt: Any, builder: Any, network: Any, req: EngineBuildSpec) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_bytes))
    for name in req.plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if not req.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: an "FP32" engine would compute in TF32
    if hasattr(trt, "ProfilingVerbosity"):
        # DETAILED keeps layer names, source ONNX nodes and precisions for the inspector and the profiler.
        config.profiling_verbosity = getattr(trt.ProfilingVerbosity, req.profiling_verbosity.upper())
    if req.builder_optimization_level is not None:
        config.builder_optimization_level = int(req.builder_optimization_level)
    if req.hardware_compatibility not in ("none", ""):
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, req.hardware_compatibility.upper())

    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    unknown = set(req.profile) - network_inputs
    if unknown:
        raise ExportError(f"profile names inputs {sorted(unknown)} that the network lacks (inputs: {sorted(network_inputs)})")
    profile = builder.create_optimization_profile()
    for name, shapes in req.profile.items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)

    if req.calibrator is not None:
        config.int8_calibrator = req.calibrator
        if req.calibration_shapes:
            # With dynamic shapes the calibrator runs at the calibration profile's shapes.
            calib = builder.create_optimization_profile()
            for name, shape in req.calibration_shapes.items():
                calib.set_shape(name, shape, shape, shape)
            config.set_calibration_profile(calib)
    return config


def attach_timing_cache(config: Any, path: Path | None) -> Any:
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another device is not reused
    return cache


def save_timing_cache(config: Any, path: Path | None) -> None:
    if path is None or not hasattr(config, "get_timing_cache"):
        return
    cache = config.get_timing_cache()
    if cache is not None:
        write_bytes_atomic(path, bytes(cache.serialize()))


def unscaled_layers(network: Any, scales: frozenset[str]) -> list[str]:
    """Layers with an output tensor the calibration cache does not name.

    The cache is computed on the CPU over ONNX tensor names; TensorRT splits some ONNX
    ops into several layers (Gemm into a matrix multiply and a bias add, for one) whose
    intermediate tensors have names of its own. Those get no scale and run in FP16/FP32.
    """
    out = []
    for i in range(int(network.num_layers)):
        layer = network.get_layer(i)
        names = [layer.get_output(j).name for j in range(int(layer.num_outputs))]
        if any(n not in scales for n in names):
            out.append(str(layer.name))
    return out


def make_builder(trt: Any, logger: Any) -> Any:
    """trt.Builder(logger); the binding raises TypeError (never returns None) when TensorRT cannot make one."""
    try:
        return trt.Builder(logger)
    except TypeError as exc:
        detail = "; ".join(logger.errors[-3:]) or str(exc).splitlines()[0]
        raise BackendUnavailableError(f"TensorRT could not create a builder: {detail}",
                                      hint="check the CUDA driver and that the GPU is visible (nvidia-smi)") from exc


def build_engine(trt: Any, req: EngineBuildSpec, ui: UI | None = None) -> BuildResult:
    """Build a serialized engine for `req`; failures raise with TensorRT's own error lines."""
    ui = ui or quiet_ui()
    logger = make_logger(trt)
    builder = make_builder(trt, logger)
    network, _parser = parse_onnx(trt, builder, logger, req.onnx_path, req.plan)
    inputs, outputs = tensors_of(network)
    unscaled = unscaled_layers(network, req.cache_scales) if req.cache_scales is not None else None
    if unscaled:
        ui.warn(f"the calibration cache names no scale for {len(unscaled)} layer output(s) TensorRT created "
                f"(e.g. {', '.join(unscaled[:3])}): those layers run in higher precision")
    config = configure(trt, builder, network, req)
    attach_timing_cache(config, req.timing_cache)
    ui.log(f"building TensorRT engine ({req.plan.path}) from {req.onnx_path.name}")
    start = time.perf_counter()
    with ui.progress(f"TensorRT build {req.plan.path}", None):
        serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    calib_error = getattr(req.calibrator, "error", None)
    if calib_error is not None:
        # TensorRT's calibrator trampolines swallowed it; it is the real cause of whatever followed.
        raise calib_error
    if serialized is None:
        detail = "; ".join(logger.errors[-5:]) or "no error was logged"
        raise ExportError(f"TensorRT could not build the engine ({req.plan.path}): {detail}")
    save_timing_cache(config, req.timing_cache)
    return BuildResult(bytes(serialized), inputs, outputs, seconds, warnings=list(logger.warnings), unscaled_layers=unscaled)


def fp16_typed_onnx(src: Path, dst: Path, *, qdq: bool = False) -> tuple[Path, str]:
    """A copy of the float graph with FP16 compute and FP32 I/O, for strongly typed TensorRT (11+).

    Why not by hand: NVIDIA's ModelOpt AutoCast is the documented replacement for the
    FP16 builder flag (it keeps numerically sensitive ops in FP32); onnxconverter-common's
    float16 pass is the fallback for plain float graphs. A QDQ graph is only handed to
    AutoCast, which knows Q/DQ scales must stay consistent.
    Returns (path, converter name).
    """
    import onnx

    try:
        from modelopt.onnx import autocast  # type: ignore[import-not-found]

        model = autocast.convert_to_mixed_precision(onnx_path=str(src), low_precision_type="fp16", keep_io_types=True)
        onnx.save(model, str(dst))
        return dst, "modelopt.autocast"
    except ImportError:
        if qdq:
            raise BackendUnavailableError(
                "an FP16-typed QDQ graph for strongly typed TensorRT needs NVIDIA ModelOpt",
                hint="pip install nvidia-modelopt[onnx], or build with fp16_rest=False (FP32 for the unquantized rest)",
            ) from None
    try:
        from onnxconverter_common import float16  # type: ignore[import-untyped]
    except ImportError:
        raise BackendUnavailableError(
            "an FP16 engine on strongly typed TensorRT needs an FP16-typed ONNX",
            hint="pip install nvidia-modelopt[onnx] (or onnxconverter-common)",
        ) from None
    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst, "onnxconverter_common.float16"
