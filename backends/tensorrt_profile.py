"""Per-layer times of a TensorRT engine as it runs, from TensorRT's own profiler (trt.IProfiler).

Why: the ONNX Runtime path (`latency.ort_profile`) reads each weighted layer's time *in
context* (fused, in the deployed layout, with its Q/DQ and reformat glue) to fit per-layer
latency factors; this is the same measurement on the GPU host. With `context.profiler` set,
TensorRT reports `report_layer_time(layer_name, ms)` once per engine layer per execution;
the layer names carry the fused ONNX node names when the engine was built with
`TrtBuildOptions(profiling_verbosity="detailed")` (the default; documented as negligible at run time).

API (for the latency-context fit):

    from hadmc_deploy.backends.tensorrt_profile import attribute_layers, onnx_node_times, parsed_onnx, profile_engine

    layer_ms = profile_engine(artifact_dir, batch=8, runs=50, warmup=10)  # TensorRT layer -> median ms, execution order
    node_ms = onnx_node_times(layer_ms, parsed_onnx(artifact_dir))        # weighted ONNX node -> ms (Conv/Gemm/MatMul)
    full = attribute_layers(layer_ms, parsed_onnx(artifact_dir), share=macs_by_node)
    # full.node_ms, full.unattributed_ms / .unattributed_layers, .split_layers (approximate), .missing_nodes

Map against the graph TensorRT parsed (`parsed_onnx`: the QDQ graph of an INT8 engine);
its Conv/Gemm nodes keep the float graph's names, the ones `ort_profile.layer_times` keys.
The per-layer sum is not the unprofiled latency (events around each layer add time, gaps
between kernels are left out; how far apart they are on a real GPU is not measured here):
scale by `Backend.benchmark`'s p50, as `ort_profile` callers do with `run_ms`.
Nothing here imports tensorrt at module level; the mapping (`tensorrt_layer_map`) needs none.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hadmc_deploy.backends.base import Artifact
from hadmc_deploy.backends.tensorrt_layer_map import LayerAttribution, attribute_layers, onnx_node_times
from hadmc_deploy.errors import ArtifactError, UsageError

__all__ = ["LayerAttribution", "attribute_layers", "make_profiler", "median_layer_ms", "onnx_node_times",
           "parsed_onnx", "profile_engine"]


def make_profiler(trt: Any) -> Any:
    """A trt.IProfiler that keeps every report, one dict per execution (`end_run` closes one)."""

    class LayerTimeProfiler(trt.IProfiler):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)  # the bindings require the explicit base __init__
            self.current: dict[str, float] = {}
            self.runs: list[dict[str, float]] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            # a name reported twice in one execution (a layer run in pieces) is summed
            self.current[str(layer_name)] = self.current.get(str(layer_name), 0.0) + float(ms)

        def end_run(self) -> None:
            self.runs.append(self.current)
            self.current = {}

        def reset(self) -> None:
            self.current, self.runs = {}, []

    return LayerTimeProfiler()


def median_layer_ms(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median ms per layer over the executions that reported it, in first-report order."""
    samples: dict[str, list[float]] = {}
    for run in runs:
        for name, ms in run.items():
            samples.setdefault(name, []).append(ms)
    return {name: float(statistics.median(v)) for name, v in samples.items()}


def _artifact_of(target: Artifact | str | Path) -> Artifact | None:
    """The artifact an engine file or directory belongs to, or None for a bare engine file."""
    if isinstance(target, Artifact):
        return target
    path = Path(target)
    if path.is_dir():
        return Artifact.load(path)
    if not path.is_file():
        raise UsageError(f"engine {path} does not exist", hint="pass an engine artifact directory or a .engine file")
    try:
        artifact = Artifact.load(path.parent)
    except ArtifactError:
        return None
    return artifact if artifact.model_path.resolve() == path.resolve() else None


def parsed_onnx(target: Artifact | str | Path) -> Path:
    """The ONNX graph TensorRT parsed for this engine artifact (what `onnx_node_times` maps against)."""
    artifact = _artifact_of(target)
    path = (artifact.metadata.get("onnx") or {}).get("path") if artifact else None
    if not path or not Path(path).is_file():
        raise ArtifactError(f"{target}: its metadata names no ONNX graph that exists here ({path})")
    return Path(path)


def _bare_engine_shapes(session: Any, batch: int) -> dict[str, tuple[int, ...]]:
    """Input shapes of an engine without metadata: its own dims, the batch axis set to `batch`."""
    shapes = {}
    for name in session.inputs:
        dims = [int(d) for d in session.engine.get_tensor_shape(name)]
        shape = (batch, *dims[1:]) if dims and dims[0] < 0 else tuple(dims)
        if any(d < 1 for d in shape):
            raise UsageError(f"engine input {name!r} has dynamic axes besides the batch ({dims})",
                             hint="profile the engine's artifact directory: its metadata holds the profile shapes")
        shapes[name] = shape
    return shapes


def profile_engine(target: Artifact | str | Path, batch: int = 1, runs: int = 50, warmup: int = 10) -> dict[str, float]:
    """TensorRT layer name -> median ms over `runs` synchronous executions after `warmup`, in execution order.

    `target`: an engine artifact (directory or Artifact; checked against this GPU and TensorRT
    first) or a bare engine file. Raises ArtifactError when TensorRT reports no layer times.
    """
    from hadmc_deploy.backends import tensorrt as trt_backend
    from hadmc_deploy.backends.tensorrt_artifact import check_compatible, profile_shapes
    from hadmc_deploy.backends.tensorrt_runtime import EngineSession

    if runs < 1 or warmup < 0 or batch < 1:
        raise UsageError(f"profile_engine needs runs >= 1, warmup >= 0, batch >= 1 (got {runs}, {warmup}, {batch})")
    trt = trt_backend._import_tensorrt()
    artifact = _artifact_of(target)
    path = artifact.model_path if artifact else Path(target)
    if artifact is not None:
        check_compatible(artifact.metadata, trt_backend.device_info(trt), artifact.path)
    session = EngineSession(trt, path.read_bytes(), str(path))
    shapes = profile_shapes(artifact.metadata.get("profile", {}), batch) if artifact else _bare_engine_shapes(session, batch)
    session.bind_random(shapes)
    context = session.context
    # Deferred reporting (8.2+): enqueue stays asynchronous and report_to_profiler() reports the
    # execution just synchronized, so each report lands in its own run; else enqueue reports itself.
    deferred = hasattr(context, "report_to_profiler") and hasattr(context, "enqueue_emits_profile")
    if deferred:
        context.enqueue_emits_profile = False
    profiler = make_profiler(trt)
    context.profiler = profiler  # the context is this call's own: it is dropped, not detached, afterwards
    for i in range(warmup + runs):
        if i == warmup:
            profiler.reset()  # warm-up reports are dropped
        session.execute_and_wait()
        if deferred:
            context.report_to_profiler()
        profiler.end_run()
    result = median_layer_ms(profiler.runs)
    if not result:
        raise ArtifactError(f"TensorRT reported no layer times for {path} (profiler attached, {runs} runs)")
    return result
