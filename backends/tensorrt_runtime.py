"""Running a TensorRT engine: deserialize, bind torch CUDA tensors, execute_async_v3, time with CUDA events.

Why torch for device memory: the project already depends on torch, whose CUDA
builds allocate, copy and time on streams; pycuda or cuda-python would be a
second CUDA binding to install and keep in step with the driver.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hadmc_deploy.backends.tensorrt_build import dtype_name, make_logger
from hadmc_deploy.errors import ArtifactError, UsageError

#: where engine tensors live ("cuda"; the fake-module tests of the binding plumbing use "cpu").
RUNTIME_DEVICE = "cuda"
#: TensorRT DataType member name -> torch dtype attribute name.
TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype(trt_dtype: Any) -> Any:
    import torch

    name = dtype_name(trt_dtype)
    if name not in TORCH_DTYPES:
        raise ArtifactError(f"engine tensor type {name} has no torch equivalent here")
    return getattr(torch, TORCH_DTYPES[name])


class EngineSession:
    """One deserialized engine with its execution context and CUDA stream."""

    def __init__(self, trt: Any, engine_bytes: bytes, where: str = "engine", *, device: str | None = None) -> None:
        import torch

        self.trt = trt
        self.torch = torch
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            detail = "; ".join(self.logger.errors[-3:]) or "TensorRT gave no reason"
            raise ArtifactError(f"TensorRT could not deserialize {where}: {detail}",
                                hint="rebuild the engine on this host with `hadmc-deploy engine`")
        self.context = self.engine.create_execution_context()
        if self.context is None:  # the binding returns None when TensorRT cannot allocate the context
            detail = "; ".join(self.logger.errors[-3:]) or "TensorRT gave no reason (out of GPU memory?)"
            raise ArtifactError(f"TensorRT could not create an execution context for {where}: {detail}")
        self.device = device or RUNTIME_DEVICE
        self.stream = torch.cuda.Stream() if self.device == "cuda" else None
        #: the device tensors whose addresses the context holds: kept alive while they are bound,
        #: or torch's caching allocator could hand their memory to the next allocation.
        self.bound: dict[str, Any] = {}
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def _bind(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Set input shapes and addresses, allocate outputs at the shapes that implies."""
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise UsageError(f"engine inputs {sorted(missing)} were not given (it takes {self.inputs})")
        for name in self.inputs:
            tensor = feeds[name]
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise UsageError(f"input {name!r} shape {tuple(tensor.shape)} is outside the engine's optimization profile")
            self.context.set_tensor_address(name, int(tensor.data_ptr()))
        outs = {}
        for name in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            out = self.torch.empty(shape, dtype=torch_dtype(self.engine.get_tensor_dtype(name)), device=self.device)
            self.context.set_tensor_address(name, int(out.data_ptr()))
            outs[name] = out
        self.bound = {**feeds, **outs}
        return outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream if self.stream is not None else 0):
            raise ArtifactError("TensorRT execute_async_v3 reported failure")

    def execute_and_wait(self) -> None:
        """One execution on the bound buffers, returned from only when the GPU has finished it."""
        self._execute()
        if self.stream is not None:
            self.stream.synchronize()

    def _device_inputs(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        feeds = {}
        for name, array in inputs.items():
            dtype = torch_dtype(self.engine.get_tensor_dtype(name)) if name in self.inputs else None
            feeds[name] = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype=dtype)
        if self.device == "cuda":
            self.torch.cuda.current_stream().synchronize()  # copies land before the engine's stream reads them
        return feeds

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self._device_inputs(inputs)
        outs = self._bind(feeds)
        self._execute()
        if self.stream is not None:
            self.stream.synchronize()
        return {name: t.float().cpu().numpy() if t.dtype in (self.torch.float16, self.torch.bfloat16) else t.cpu().numpy()
                for name, t in outs.items()}

    def bind_random(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Bind random inputs of `shapes` and fresh outputs; `self.bound` keeps all of them alive."""
        rng = np.random.default_rng(0)
        self._bind(self._device_inputs({n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}))

    def time_runs(self, shapes: dict[str, tuple[int, ...]], warmup: int, runs: int) -> list[float]:
        """Milliseconds per execute_async_v3 measured with CUDA events on the engine's stream."""
        self.bind_random(shapes)
        for _ in range(warmup):
            self._execute()
        self.stream.synchronize()
        samples = []
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        for _ in range(runs):
            start.record(self.stream)
            self._execute()
            end.record(self.stream)
            end.synchronize()
            samples.append(float(start.elapsed_time(end)))
        return samples

    def layer_summary(self) -> dict[str, Any]:
        """Layer count and how many run INT8, from the engine inspector (best effort: None where absent)."""
        if not hasattr(self.engine, "create_engine_inspector"):
            return {"layers": None, "int8_layers": None, "reason": "no engine inspector in this TensorRT"}
        inspector = self.engine.create_engine_inspector()
        info = json.loads(inspector.get_engine_information(self.trt.LayerInformationFormat.JSON))
        layers = info.get("Layers", []) if isinstance(info, dict) else []
        # With DETAILED verbosity each layer is a dict whose I/O entries name the type ("Int8 ...").
        int8 = sum(1 for layer in layers if isinstance(layer, dict) and "int8" in json.dumps(layer).lower())
        return {"layers": len(layers), "int8_layers": int8}
