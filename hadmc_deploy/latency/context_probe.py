"""What the context fit measures on a deployed plan, per backend: each weighted ONNX node's
in-context time (a profiler of the real engine or session) and the whole model's time.

ONNX Runtime: its own profiler (`ort_profile`) and measuring sessions.
TensorRT, on a GPU host: TensorRT's IProfiler (`backends/tensorrt_profile.py`), its layers
mapped back to the ONNX nodes they fused (`backends/tensorrt_layer_map.py`), and the engine
timed through `Backend.benchmark`. The TensorRT probe is tested
here only against the fake `tensorrt` module; `tools/check_tensorrt.py` (its context-fit step) checks the
real thing on a GPU host.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import onnx

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.timing import WHOLE_MODEL_SECONDS, timed_samples


class ContextProbe(Protocol):
    def node_times(self, artifact: Any, source: onnx.ModelProto, batch: int, runs: int) -> dict[str, float]:
        """Weighted ONNX node name (of the float graph `source`) -> ms in the deployed graph."""

    def model_ms(self, artifact: Any, batch: int, runs: int) -> float:
        """The whole deployed model's median over `runs` runs (one round)."""


class OrtProbe:
    """ONNX Runtime: clock "cpu" runs one thread and CPU time."""

    def __init__(self, threads: int | None, clock: str) -> None:
        self.threads, self.clock = threads, clock

    def node_times(self, artifact: Any, source: onnx.ModelProto, batch: int, runs: int) -> dict[str, float]:
        from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers
        from hadmc_deploy.latency.ort_profile import layer_times, profile_session

        # one session alive at a time: spinning as deployed (latency.repeat.measuring_session)
        prof = profile_session(Path(artifact.model_path), batch=batch, threads=1 if self.clock == "cpu" else self.threads, runs=runs,
                               disabled_optimizers=artifact_disabled_optimizers(artifact.metadata), allow_spinning=True, min_seconds=WHOLE_MODEL_SECONDS)
        return layer_times(prof, source)

    def model_ms(self, artifact: Any, batch: int, runs: int) -> float:
        from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers

        return whole_model_ms(Path(artifact.model_path), batch, self.threads, runs, self.clock, artifact_disabled_optimizers(artifact.metadata))


class TensorRTProbe:
    """TensorRT on a GPU host (see the module docstring)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def node_times(self, artifact: Any, source: onnx.ModelProto, batch: int, runs: int) -> dict[str, float]:
        from hadmc_deploy.backends.tensorrt_profile import onnx_node_times, parsed_onnx, profile_engine

        return onnx_node_times(profile_engine(artifact, batch=batch, runs=runs, warmup=max(2, runs // 4)), parsed_onnx(artifact))

    def model_ms(self, artifact: Any, batch: int, runs: int) -> float:
        return float(self.backend.benchmark(artifact, batch=batch, warmup=2, runs=runs, min_seconds=WHOLE_MODEL_SECONDS).p50_ms)


def probe_for(backend: Any, threads: int | None, clock: str) -> ContextProbe:
    if backend.name == "onnxruntime":
        return OrtProbe(threads, clock)
    if backend.name == "tensorrt":
        if clock != "wall":
            raise LatencyModelError("TensorRT engines are timed on the wall clock", hint="measure the TensorRT table with --clock wall")
        return TensorRTProbe(backend)
    raise LatencyModelError(f"no in-context profiler for the {backend.name} backend", hint="the per-layer context correction is available for onnxruntime and tensorrt")


def whole_model_ms(model_path: Path, batch: int, threads: int | None, runs: int, clock: str = "wall", disabled_optimizers: Sequence[str] = (),
                   min_seconds: float = WHOLE_MODEL_SECONDS) -> float:
    """Median of `runs` runs (more while under `min_seconds` have passed: see hadmc_deploy.timing)
    of the model file in a session of its own, spinning as deployed (no other session may be alive
    meanwhile: see latency.repeat.measuring_session); clock "cpu": one thread, CPU time."""
    import statistics

    return statistics.median(whole_model_runs(model_path, batch, threads, runs, clock, disabled_optimizers, min_seconds))


def whole_model_runs(model_path: Path, batch: int, threads: int | None, runs: int, clock: str = "wall", disabled_optimizers: Sequence[str] = (),
                     min_seconds: float = WHOLE_MODEL_SECONDS) -> list[float]:
    """Every run's ms of one `whole_model_ms` round (a fresh session, two warm-up runs): for tools
    that compare statistics of the same runs (tools/bench_round_statistic.py)."""
    from hadmc_deploy.backends.ort_session import random_feeds
    from hadmc_deploy.latency.repeat import clock_function, measuring_session

    sess = measuring_session(model_path, 1 if clock == "cpu" else threads, disabled_optimizers, allow_spinning=True)
    feeds = random_feeds(sess, batch=batch)
    for _ in range(2):
        sess.run(None, feeds)
    return timed_samples(lambda: sess.run(None, feeds), runs, min_seconds, clock=clock_function(clock))
