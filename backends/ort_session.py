"""ONNX Runtime sessions configured one way for deployment, `bench` and per-layer timing.

A latency table is only worth its numbers if it measures the kernels deployment
runs, so every session in the project comes from `session_options()`: the
artifact's, the benchmark's and `measure_layer`'s. onnxruntime is imported inside
the functions so `import hadmc_deploy` works without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.errors import UsageError
from hadmc_deploy.timing import timed_samples

from .base import LatencyStats

OPT_LEVELS = ("disable", "basic", "extended", "all")
#: our short names -> onnxruntime.GraphOptimizationLevel member names (what metadata.json records).
ORT_LEVEL_NAMES = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
LEVEL_FROM_ORT_NAME = {v: k for k, v in ORT_LEVEL_NAMES.items()}
#: the level deployed sessions run with.
DEFAULT_OPT_LEVEL = "all"


def resolve_threads(threads: int | None = None) -> int:
    """Intra-op threads: the given count, else one per logical CPU (recorded, not left to ORT's default)."""
    if threads is not None and threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    return threads or os.cpu_count() or 1


def session_options(threads: int | None = None, opt_level: str = DEFAULT_OPT_LEVEL, optimized_model_path: str | Path | None = None) -> Any:
    """`onnxruntime.SessionOptions` as deployment uses them; the latency tables import this too."""
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise UsageError(f"unknown graph optimization level {opt_level!r}", hint=f"use one of {', '.join(OPT_LEVELS)}")
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = resolve_threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[opt_level]
    so.log_severity_level = 3  # errors only: warnings would interleave with our progress bars
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


def make_session(
    model: str | Path | bytes,
    threads: int | None = None,
    opt_level: str = DEFAULT_OPT_LEVEL,
    optimized_model_path: str | Path | None = None,
    disabled_optimizers: Sequence[str] = (),
) -> Any:
    """A CPU InferenceSession from a path or serialized bytes; `disabled_optimizers` are ORT graph
    transformers to skip (an artifact records them, see ort_optimizer_choice)."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads, opt_level, optimized_model_path), providers=["CPUExecutionProvider"], **disabled_kwargs(disabled_optimizers))


def disabled_kwargs(disabled_optimizers: Sequence[str]) -> dict[str, Any]:
    """InferenceSession's keyword for graph transformers to skip (none: no keyword at all)."""
    return {"disabled_optimizers": set(disabled_optimizers)} if disabled_optimizers else {}


def random_feeds(session: Any, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs for every graph input; `batch` fills the first (symbolic or not) axis."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if batch is not None and dims:
            static = inp.shape[0]
            if isinstance(static, int) and static > 0 and static != batch:
                raise UsageError(f"the model's input {inp.name!r} has a fixed batch of {static}, not {batch}", hint=f"benchmark with --batch {static} or export with a dynamic batch")
            dims[0] = batch
        if inp.type in ("tensor(int8)", "tensor(uint8)"):  # a layer inside an int8 chain takes quantized input
            dtype = np.int8 if inp.type == "tensor(int8)" else np.uint8
            info = np.iinfo(dtype)
            feeds[inp.name] = rng.integers(info.min, info.max, dims, endpoint=True, dtype=dtype)
        else:
            dtype = {"tensor(float16)": np.float16, "tensor(int64)": np.int64}.get(inp.type, np.float32)
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


def time_session(session: Any, feeds: dict[str, np.ndarray], warmup: int, runs: int, batch: int, min_seconds: float = 0.0) -> LatencyStats:
    """`runs` timed `session.run` calls (time.perf_counter around each) after `warmup` untimed ones;
    more while under `min_seconds` have passed (hadmc_deploy.timing)."""
    for _ in range(warmup):
        session.run(None, feeds)
    samples = timed_samples(lambda: session.run(None, feeds), runs, min_seconds)
    return LatencyStats.from_samples(samples, batch=batch, warmup=warmup)
