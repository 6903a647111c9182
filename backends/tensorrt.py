"""The TensorRT backend: INT8/FP16/FP32 engines for NVIDIA GPUs (the T4 target), built from our ONNX.

TensorRT is imported inside methods only: `available()` answers (False, one-line
reason) on machines without it and nothing here raises at `import hadmc_deploy`.
The work is split by job: `tensorrt_features` (what this TensorRT can do and the
precision path that follows), `tensorrt_build` (parse + configure + build),
`tensorrt_inputs` (which graph and calibration a request gets),
`tensorrt_calibrator` (implicit calibration), `tensorrt_runtime` (run + time),
`tensorrt_profile` (per-layer times from TensorRT's IProfiler) with `tensorrt_layer_map`
(layer names -> ONNX nodes; no GPU needed), `tensorrt_artifact` (metadata, compatibility,
profiles, fallback; no GPU needed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.backends.artifact_dir import replace_dir, staging_dir
from hadmc_deploy.backends.base import Artifact, Backend, LatencyStats, register
from hadmc_deploy.backends.request import BuildRequest, TrtBuildOptions
from hadmc_deploy.backends.tensorrt_artifact import (
    ENGINE_FILE,
    batch_triple_from_sizes,
    check_compatible,
    derive_profile,
    engine_metadata,
    onnx_input_shapes,
    profile_shapes,
    timing_cache_path,
)
from hadmc_deploy.backends.tensorrt_features import MIN_VERSION_TEXT, detect_features, plan_precision
from hadmc_deploy.backends.tensorrt_inputs import choose_int8_mode, graph_for, prepare_calibration
from hadmc_deploy.fileio import sha256_file, write_bytes_atomic
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import TargetProfile, get_target
from hadmc_deploy.ui import UI, quiet_ui


def _import_tensorrt() -> Any:
    import tensorrt  # type: ignore[import-not-found]

    return tensorrt


def availability() -> tuple[bool, str]:
    """(True, "TensorRT X on GPU (sm_YZ)") or (False, the first reason it cannot run here)."""
    try:
        trt = _import_tensorrt()
    except ImportError:
        return False, "the tensorrt Python module is not installed (pip install tensorrt on a host with an NVIDIA GPU)"
    except Exception as exc:  # a broken install (missing libnvinfer, CUDA mismatch) is a reason, not a crash
        first = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"importing tensorrt failed: {type(exc).__name__}: {first}"
    features = detect_features(trt)
    if features.missing:
        return False, f"TensorRT {features.version} is too old: it lacks {', '.join(features.missing[:3])} (need {MIN_VERSION_TEXT} or newer)"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False, "torch is not installed; the TensorRT backend moves data through torch CUDA tensors"
    if torch.version.cuda is None:
        return False, f"no CUDA device: torch {torch.__version__} is a CPU-only build (TensorRT {features.version} is installed)"
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return False, f"no CUDA device: torch.cuda.is_available() is False (TensorRT {features.version} is installed)"
    major, minor = torch.cuda.get_device_capability(0)
    return True, f"TensorRT {features.version} on {torch.cuda.get_device_name(0)} (sm_{major}{minor})"


def device_info(trt: Any) -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "backend": "tensorrt",
        "available": True,
        "tensorrt_version": str(trt.__version__),
        "gpu_name": str(props.name),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_gib": round(props.total_memory / 2**30, 2),
        "multiprocessors": int(props.multi_processor_count),
        "cuda_runtime": torch.version.cuda,
    }


@register("tensorrt")
class TensorRTBackend(Backend):
    """Engines from ONNX, built from a typed BuildRequest (its `trt` section: TrtBuildOptions)."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, float], Any] = {}

    def available(self) -> tuple[bool, str]:
        return availability()

    def default_target(self) -> TargetProfile:
        return get_target("cuda")

    def describe_device(self) -> dict[str, Any]:
        ok, reason = self.available()
        if not ok:
            return {"backend": "tensorrt", "available": False, "reason": reason}
        return device_info(_import_tensorrt())

    # -- build ---------------------------------------------------------------------
    def _build(self, request: BuildRequest) -> Artifact:
        """Choose the precision path this TensorRT supports, build in a staging directory, then move it into place."""
        from hadmc_deploy.backends.tensorrt_build import EngineBuildSpec, build_engine

        trt = _import_tensorrt()
        ui: UI = request.ui or quiet_ui()
        opts = request.trt
        features = detect_features(trt)
        fp16_rest = opts.fp16_rest if opts.fp16_rest is not None else "fp16" in request.target.precisions
        int8_mode = choose_int8_mode(features, request) if request.precision == "int8" else "qdq"
        plan = plan_precision(features, request.precision, int8_mode, fp16_rest=fp16_rest, calibrator=opts.calibrator)
        with staging_dir(request.out_dir) as staging:
            work = staging / "work"
            work.mkdir()
            graph, converter = graph_for(plan, request, work, ui)
            profile = derive_profile(onnx_input_shapes(graph), tuple(opts.batch or batch_triple_from_sizes(request.target.batch_sizes)))
            device = device_info(trt)
            calib = None
            calibration: dict[str, Any] | None = None
            if plan.calibrator is not None:
                calib = prepare_calibration(trt, plan, graph, profile, request, staging, ui)
                calibration = calib.record
            elif plan.onnx_kind.startswith("qdq"):
                calibration = {"kind": "qdq-scales-in-onnx", "sha256": sha256_file(graph)}
            timing_path = None
            if opts.use_timing_cache:
                timing_path = opts.timing_cache or timing_cache_path(device["gpu_name"], str(trt.__version__))
                timing_path.parent.mkdir(parents=True, exist_ok=True)
            spec = EngineBuildSpec(
                onnx_path=graph, plan=plan, profile=profile, workspace_bytes=int(opts.workspace_mb) << 20,
                timing_cache=timing_path, calibrator=calib.calibrator if calib else None,
                calibration_shapes=calib.shapes if calib else {}, hardware_compatibility=opts.hardware_compatibility,
                builder_optimization_level=opts.builder_optimization_level, tf32=opts.tf32,
                cache_scales=calib.cache_scales if calib else None, profiling_verbosity=opts.profiling_verbosity,
            )
            result = build_engine(trt, spec, ui)
            write_bytes_atomic(staging / ENGINE_FILE, result.engine)
            if calib is not None and calibration is not None:
                cache_file = staging / "calibration.cache"
                calibration["sha256"] = sha256_file(cache_file) if cache_file.is_file() else None
                calibration["read_from_cache"] = bool(calib.calibrator.cache.read_from_file)
                calibration["unscaled_layers"] = result.unscaled_layers
            metadata = engine_metadata(
                trt_version=str(trt.__version__), device=device, plan=plan.to_dict(), profile=profile,
                inputs=result.inputs, outputs=result.outputs, onnx_path=graph, onnx_sha256=sha256_file(graph),
                calibration=calibration, build_seconds=result.seconds, features=features.to_dict(),
                extra={
                    "source_onnx": {"path": str(request.onnx_path), "sha256": sha256_file(request.onnx_path)},
                    "fp16_converter": converter,
                    "timing_cache": str(timing_path) if timing_path else None,
                    "workspace_mb": int(opts.workspace_mb),
                    "tf32": opts.tf32,
                    "profiling_verbosity": opts.profiling_verbosity,
                    "hardware_compatibility": opts.hardware_compatibility,
                    "target": request.target.name,
                    "preprocess": request.preprocess,
                    "extra": dict(request.extra),
                    "builder_warnings": result.warnings[:20],
                },
            )
            if graph.is_relative_to(staging):  # a converted graph: record where it will live
                metadata["onnx"]["path"] = str(request.out_dir / graph.relative_to(staging))
            metadata["layers"] = self._layer_summary(trt, result.engine, request.out_dir / ENGINE_FILE)
            if not any(work.iterdir()):
                work.rmdir()  # keep converted graphs only when there are some
            Artifact(path=staging, model_file=ENGINE_FILE, metadata=metadata).save_metadata()
            replace_dir(staging, request.out_dir)
        return Artifact.load(request.out_dir)

    @staticmethod
    def _layer_summary(trt: Any, engine: bytes, where: Path) -> dict[str, Any]:
        try:
            from hadmc_deploy.backends.tensorrt_runtime import EngineSession

            return EngineSession(trt, engine, str(where)).layer_summary()
        except Exception as exc:  # the summary is informative only; the engine is already built
            return {"layers": None, "int8_layers": None, "reason": f"{type(exc).__name__}: {exc}"}

    # -- run and time ------------------------------------------------------------------
    def _session(self, artifact: Artifact) -> Any:
        """One deserialized engine per file (and modification time): `run` must not deserialize each call."""
        from hadmc_deploy.backends.tensorrt_runtime import EngineSession

        trt = _import_tensorrt()
        check_compatible(artifact.metadata, device_info(trt), artifact.path)
        path = artifact.model_path
        key = (str(path.resolve()), path.stat().st_mtime)
        if key not in self._sessions:
            self._sessions[key] = EngineSession(trt, path.read_bytes(), str(path))
        return self._sessions[key]

    def _run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._session(artifact).run(inputs)

    def _benchmark(self, artifact: Artifact, batch: int, warmup: int, runs: int) -> LatencyStats:
        shapes = profile_shapes(artifact.metadata.get("profile", {}), batch)
        samples = self._session(artifact).time_runs(shapes, warmup, runs)
        return LatencyStats.from_samples(samples, batch=batch, warmup=warmup)

    def _measure_layer(self, spec: LayerSpec, warmup: int, runs: int) -> LatencyStats:
        """Build an engine of one layer (`layer_model`, QDQ form for INT8) at its batch and time it."""
        import onnx

        from hadmc_deploy.layer_onnx import layer_model

        model = layer_model(spec, int8_form="qdq_s8s8" if spec.precision == "int8" else None)
        with tempfile.TemporaryDirectory(prefix="hadmc-trt-layer-") as tmp:
            path = Path(tmp) / "layer.onnx"
            onnx.save(model, str(path))
            request = BuildRequest(path, spec.precision, Path(tmp) / "engine", self.default_target(),
                                   trt=TrtBuildOptions(batch=(spec.batch,) * 3, int8_mode="qdq"))
            artifact = self.build(request)
            return self._benchmark(artifact, spec.batch, warmup, runs)
