"""A FAKE `tensorrt` module for CPU tests of call sequences and flags per TensorRT version.

It records which API calls our build code makes (create_network flags,
set_flag, calibrator, profiles, timing cache) and returns placeholder bytes as
the "engine". It builds nothing and runs nothing: tests that use it check our
branching and plumbing, never that an engine builds (only tools/check_tensorrt.py
on a GPU host with real TensorRT shows that).
"""

from __future__ import annotations

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


def make_fake_trt(version: str, *, weak_typing: bool, calibrators: bool, implicit_batch: bool = False,
                  parser_errors: list[tuple[str, str, str]] | None = None) -> types.ModuleType:
    """A stand-in `tensorrt` module shaped like release `version`.

    weak_typing: BuilderFlag.INT8/FP16 exist (8.6-10.x); calibrators: IInt8*Calibrator and
    IBuilderConfig.int8_calibrator exist (8.6-10.x); implicit_batch: Builder.max_batch_size and
    EXPLICIT_BATCH exist (before 10). parser_errors: (node name, op, description) the parser reports.
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # type: ignore[attr-defined]
    calls: list[tuple[Any, ...]] = trt.calls  # type: ignore[attr-defined]

    flags = {"TF32": 7}
    if weak_typing:
        flags.update(FP16=0, INT8=1)
    trt.BuilderFlag = _Enum(**flags)
    net_flags = {"STRONGLY_TYPED": 1}
    if implicit_batch or version.startswith("10."):
        net_flags["EXPLICIT_BATCH"] = 0
    trt.NetworkDefinitionCreationFlag = _Enum(**net_flags)
    trt.MemoryPoolType = _Enum(WORKSPACE=0)
    trt.ProfilingVerbosity = _Enum(LAYER_NAMES_ONLY=0, DETAILED=2)
    trt.TensorIOMode = _Enum(NONE=0, INPUT=1, OUTPUT=2)
    trt.DataType = _Enum(FLOAT=0, HALF=1, INT8=2, INT32=3)

    class ILogger:
        Severity = _Enum(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    trt.ILogger = ILogger

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape, self.dtype = name, shape, trt.DataType.FLOAT

    class Network:
        def __init__(self, flags_value: int) -> None:
            self.flags_value = flags_value
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

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
            self.logger = logger

        def create_network(self, flags_value: int = 0) -> Network:
            calls.append(("create_network", int(flags_value)))
            return Network(int(flags_value))

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: IBuilderConfig) -> bytes:
            calls.append(("build_serialized_network", tuple(config.flag_names)))
            return FAKE_ENGINE

    if implicit_batch:
        Builder.max_batch_size = 1
    trt.Builder = Builder

    class ICudaEngine:
        num_io_tensors = 0

    class IExecutionContext:
        def execute_async_v3(self, stream: int) -> bool:
            raise AssertionError("the fake module cannot execute anything")

        set_input_shape = set_tensor_address = execute_async_v3

    class Runtime:
        def __init__(self, logger: Any) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> None:
            calls.append(("deserialize_cuda_engine", len(data)))
            return None

    trt.ICudaEngine, trt.IExecutionContext, trt.Runtime = ICudaEngine, IExecutionContext, Runtime
    return trt


def fake_trt_10() -> types.ModuleType:
    return make_fake_trt("10.3.0", weak_typing=True, calibrators=True)


def fake_trt_11() -> types.ModuleType:
    return make_fake_trt("11.4.0", weak_typing=False, calibrators=False)


def fake_trt_86() -> types.ModuleType:
    return make_fake_trt("8.6.1", weak_typing=True, calibrators=True, implicit_batch=True)
