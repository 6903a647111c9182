"""A FAKE `tensorrt` module for CPU tests of call sequences and flags per TensorRT version.

It records which API calls our build code makes (create_network flags,
set_flag, calibrator, profiles, timing cache) and returns placeholder bytes as
the "engine". It builds nothing and runs nothing: tests that use it check our
branching and plumbing, never that an engine builds (only tools/check_tensorrt.py
on a GPU host with real TensorRT shows that).

What it copies from the real bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp,
pyInt8.cpp and include/NvInfer.h at v8.6.1, v10.x and v11.0), so that tests fail
where real TensorRT would:
* enum members and values per release: NetworkDefinitionCreationFlag is
  EXPLICIT_BATCH=0, EXPLICIT_PRECISION=1 on 8.6; EXPLICIT_BATCH=0, STRONGLY_TYPED=1
  on 10.x; STRONGLY_TYPED=0 (deprecated, ignored), PREFER_JIT_PYTHON_PLUGINS=1,
  PREFER_AOT_PYTHON_PLUGINS=2 on 11. BuilderFlag FP16=0, INT8=1 until 10.x (gone in
  11); TF32=7 on 8.6 and 6 from 10.0.
* the calibrator trampolines: an exception raised in get_batch,
  read_calibration_cache or write_calibration_cache is caught, printed to stderr
  and turned into "no batch" / "no cache" - it never reaches the caller.
* trt.Builder(logger) raises TypeError when TensorRT returns no builder (pybind11's
  factory-returned-nullptr error); create_execution_context() may return None.
Its layer list imitates TensorRT splitting one ONNX Gemm into two layers with a
tensor of its own between them (the name is made up; real names differ).
Per-layer profiling: trt.IProfiler and IExecutionContext.profiler / enqueue_emits_profile /
report_to_profiler() as the bindings name them (8.2+). The layer names and times it reports are
whatever the test hands it (`layer_times`): they are not what a real engine would report.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import onnx

FAKE_ENGINE = b"FAKE-TENSORRT-ENGINE-NOT-RUNNABLE"


class _Enum:
    def __init__(self, **members: int) -> None:
        for name, value in members.items():
            setattr(self, name, _Member(name, value))


class _Member(int):
    def __new__(cls, name: str, value: int) -> _Member:
        obj = int.__new__(cls, value)
        obj.name = name  # type: ignore[attr-defined]
        return obj


def _release(version: str) -> int:
    return int(version.split(".")[0])


def _trampoline(where: str, fn: Any, default: Any) -> Any:
    """What pyInt8.cpp does around every calibrator call: catch, print, return a neutral value."""
    try:
        return fn()
    except Exception as exc:
        print(f"[ERROR] Exception caught in {where}(): {exc}", file=sys.stderr)
        return default


def make_fake_trt(version: str, *, parser_errors: list[tuple[str, str, str]] | None = None, builder_fails: bool = False,
                  context_fails: bool = False, runnable: bool = False,
                  layer_times: list[list[tuple[str, float]]] | None = None) -> types.ModuleType:
    """A stand-in `tensorrt` module shaped like release `version` (8.6, 10.x or 11.x).

    parser_errors: (node name, op, description) the parser reports. builder_fails: trt.Builder raises
    TypeError. runnable: deserialize_cuda_engine returns a fake engine whose context records bindings
    (execute does nothing); context_fails: its create_execution_context returns None. layer_times: what an
    attached profiler is told per execution, (layer name, ms) pairs, the k-th execution getting entry k modulo
    their number (default: nothing).
    """
    major = _release(version)
    weak_typing, calibrators, implicit_batch = major <= 10, major <= 10, major < 10
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    calls: list[tuple[Any, ...]] = trt.calls  # type: ignore[attr-defined]

    flags = {"TF32": 7 if major < 10 else 6}
    if weak_typing:
        flags.update(FP16=0, INT8=1)
    trt.BuilderFlag = _Enum(**flags)
    if major < 10:
        net_flags = {"EXPLICIT_BATCH": 0, "EXPLICIT_PRECISION": 1}
    elif major == 10:
        net_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    else:
        net_flags = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
    trt.NetworkDefinitionCreationFlag = _Enum(**net_flags)
    trt.MemoryPoolType = _Enum(WORKSPACE=0)
    trt.ProfilingVerbosity = _Enum(LAYER_NAMES_ONLY=0, NONE=1, DETAILED=2)
    trt.TensorIOMode = _Enum(NONE=0, INPUT=1, OUTPUT=2)
    trt.DataType = _Enum(FLOAT=0, HALF=1, INT8=2, INT32=3)
    trt.LayerInformationFormat = _Enum(ONELINE=0, JSON=1)

    class ILogger:
        Severity = _Enum(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger

    class IProfiler:
        def __init__(self) -> None:
            pass

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            raise NotImplementedError  # the bindings' base is pure virtual

    trt.IProfiler = IProfiler

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape, self.dtype = name, shape, trt.DataType.FLOAT

    class Layer:
        def __init__(self, name: str, outputs: list[str]) -> None:
            self.name, self.outputs = name, [Tensor(o, []) for o in outputs]

        num_outputs = property(lambda self: len(self.outputs))

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    class Network:
        def __init__(self, flags_value: int) -> None:
            self.flags_value = flags_value
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.layers: list[Layer] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: len(self.layers))

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_output(self, i: int) -> Tensor:
            return self.outputs[i]

    class ParserError:
        def __init__(self, node: str, op: str, desc: str) -> None:
            self._node, self._op, self._desc = node, op, desc

        def node_name(self) -> str:
            return self._node

        def node_operator(self) -> str:
            return self._op

        def desc(self) -> str:
            return self._desc

    class OnnxParser:
        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network
            self.errors = [ParserError(*e) for e in (parser_errors or [])]

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            graph = onnx.load(path).graph
            inits = {i.name for i in graph.initializer}

            def dims(v: Any) -> list[int]:
                return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]

            self.network.inputs = [Tensor(v.name, dims(v)) for v in graph.input if v.name not in inits]
            self.network.outputs = [Tensor(v.name, dims(v)) for v in graph.output]
            for node in graph.node:
                if node.op_type == "Gemm":  # one ONNX op, two layers, a tensor between them named by TensorRT
                    self.network.layers.append(Layer(f"{node.name}_matmul", [f"{node.output[0]}_trt_matmul_out"]))
                self.network.layers.append(Layer(node.name, list(node.output)))
            calls.append(("parsed_ops", tuple(n.op_type for n in graph.node)))
            return not self.errors

        parse = None  # present so feature detection sees the documented API

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> ParserError:
            return self.errors[i]

    trt.OnnxParser = OnnxParser

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"FAKE-TIMING-CACHE:" + self.data

    class IBuilderConfig:
        def __init__(self) -> None:
            self.profiles: list[Profile] = []
            self.flag_names: list[str] = []
            self.timing_cache: TimingCache | None = None
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool.name, size))

        def set_flag(self, flag: Any) -> None:
            self.flag_names.append(flag.name)
            calls.append(("set_flag", flag.name))

        def clear_flag(self, flag: Any) -> None:
            calls.append(("clear_flag", flag.name))

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            calls.append(("add_optimization_profile", dict(profile.shapes)))
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            calls.append(("set_timing_cache", ignore_mismatch))
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.timing_cache

    if calibrators:
        def _set_calibrator(self: Any, value: Any) -> None:
            calls.append(("int8_calibrator", type(value).__mro__[1].__name__))
            self._calibrator = value

        IBuilderConfig.int8_calibrator = property(lambda self: getattr(self, "_calibrator", None), _set_calibrator)

        def set_calibration_profile(self: Any, profile: Profile) -> None:
            calls.append(("set_calibration_profile", dict(profile.shapes)))

        IBuilderConfig.set_calibration_profile = set_calibration_profile

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        class IInt8MinMaxCalibrator:
            def __init__(self) -> None:
                pass

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        trt.IInt8MinMaxCalibrator = IInt8MinMaxCalibrator
    trt.IBuilderConfig = IBuilderConfig

    class Builder:
        def __init__(self, logger: Any) -> None:
            if builder_fails:
                raise TypeError("pybind11::init(): factory function returned nullptr")
            self.logger = logger

        def create_network(self, flags_value: int = 0) -> Network:
            calls.append(("create_network", int(flags_value)))
            return Network(int(flags_value))

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: IBuilderConfig) -> bytes | None:
            calls.append(("build_serialized_network", tuple(config.flag_names)))
            calls.append(("profiling_verbosity", getattr(config.profiling_verbosity, "name", None)))
            calibrator = getattr(config, "_calibrator", None)
            if calibrator is not None and not self._calibrate(network, calibrator):
                self.logger.log(ILogger.Severity.ERROR, "Calibration failure occurred with no scaling factors detected.")
                return None
            return FAKE_ENGINE

        def _calibrate(self, network: Network, calibrator: Any) -> bool:
            """The calibrator protocol as TensorRT drives it, every call through the swallowing trampoline."""
            cache = _trampoline("read_calibration_cache", calibrator.read_calibration_cache, None)
            if cache is not None:
                calls.append(("calibration_cache_used", len(bytes(cache))))
                return True
            names = [network.get_input(i).name for i in range(network.num_inputs)]
            batches = 0
            while _trampoline("get_batch", lambda: calibrator.get_batch(names), None):
                batches += 1
            calls.append(("calibrated_batches", batches))
            if batches == 0:
                return False
            text = f"TRT-{version.replace('.', '')}-EntropyCalibration2\n{names[0]}: 3c010a14\n".encode()
            _trampoline("write_calibration_cache", lambda: calibrator.write_calibration_cache(memoryview(text)), None)
            return True

    if implicit_batch:
        Builder.max_batch_size = 1
    trt.Builder = Builder

    class IExecutionContext:
        def __init__(self) -> None:
            self.addresses: dict[str, int] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.profiler: Any = None
            self.enqueue_emits_profile = True
            self.executions = 0
            self._pending: list[tuple[str, float]] = []

        def report_to_profiler(self) -> bool:
            """Hand the profiler the last execution's layer times (when enqueue did not)."""
            calls.append(("report_to_profiler", len(self._pending)))
            self._report()
            return True

        def _report(self) -> None:
            for name, ms in self._pending:
                self.profiler.report_layer_time(name, ms)
            self._pending = []

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            batch = next(iter(self.shapes.values()))[0]
            return (batch, 4)

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream: int) -> bool:
            calls.append(("execute_async_v3", dict(self.addresses)))
            if self.profiler is not None and layer_times:
                self._pending = list(layer_times[self.executions % len(layer_times)])
                if self.enqueue_emits_profile:
                    self._report()
            self.executions += 1
            return True  # computes nothing: the fake runs no kernels

    class ICudaEngine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ("input", "output")[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return trt.DataType.FLOAT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 1, 8, 8) if name == "input" else (-1, 4)

        def create_execution_context(self) -> IExecutionContext | None:
            return None if context_fails else IExecutionContext()

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> ICudaEngine | None:
            calls.append(("deserialize_cuda_engine", len(data)))
            return ICudaEngine() if runnable else None

    trt.ICudaEngine, trt.IExecutionContext, trt.Runtime = ICudaEngine, IExecutionContext, Runtime
    return trt


def fake_trt_10() -> types.ModuleType:
    return make_fake_trt("10.3.0")


def fake_trt_11() -> types.ModuleType:
    return make_fake_trt("11.4.0")


def fake_trt_86() -> types.ModuleType:
    return make_fake_trt("8.6.1")


#: the GPU the fake module stands for (what `device_info` reports while it is installed).
FAKE_DEVICE = {"backend": "tensorrt", "available": True, "gpu_name": "Tesla T4", "compute_capability": "7.5"}


def fake_installer(monkeypatch: Any, *, cpu_buffers: bool) -> Any:
    """install(trt): put a FAKE tensorrt module in sys.modules and describe FAKE_DEVICE for it;
    `cpu_buffers` also moves the runtime's and the calibrator's buffers to the CPU (no CUDA here)."""
    import hadmc_deploy.backends.tensorrt as trt_backend

    if cpu_buffers:
        import hadmc_deploy.backends.tensorrt_calibrator as trt_calibrator
        import hadmc_deploy.backends.tensorrt_runtime as trt_runtime

        monkeypatch.setattr(trt_calibrator, "CALIBRATION_DEVICE", "cpu")
        monkeypatch.setattr(trt_runtime, "RUNTIME_DEVICE", "cpu")

    def install(trt: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_backend, "device_info", lambda t: {**FAKE_DEVICE, "tensorrt_version": t.__version__})
        return trt

    return install
