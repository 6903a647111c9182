"""The TensorRT backend: INT8/FP16/FP32 engines for NVIDIA GPUs (the T4 target), built from our ONNX.

TensorRT is imported inside methods only: `available()` answers (False, one-line
reason) on machines without it and nothing here raises at `import hadmc_deploy`.
The work is split by job: `tensorrt_features` (what this TensorRT can do and the
precision path that follows), `tensorrt_build` (parse + configure + build),
`tensorrt_calibrator` (implicit calibration), `tensorrt_runtime` (run + time),
`tensorrt_artifact` (metadata, compatibility, profiles, fallback; no GPU needed).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.backends.base import Artifact, Backend, LatencyStats, register
from hadmc_deploy.backends.tensorrt_artifact import (
    ENGINE_FILE,
    batch_triple_from_sizes,
    check_compatible,
    derive_profile,
    engine_metadata,
    onnx_has_qdq,
    onnx_input_shapes,
    sibling_qdq,
    timing_cache_path,
)
from hadmc_deploy.backends.tensorrt_features import (
    MIN_VERSION_TEXT,
    PrecisionPlan,
    detect_features,
    plan_precision,
)
from hadmc_deploy.errors import BackendUnavailableError, UsageError
from hadmc_deploy.fileio import sha256_file, write_bytes_atomic
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import UI, quiet_ui

DEFAULT_BATCH_SIZES = (1, 8, 32)


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
    """Engines from ONNX; options of `build` are documented in `_build`."""

    def available(self) -> tuple[bool, str]:
        return availability()

    def describe_device(self) -> dict[str, Any]:
        ok, reason = self.available()
        if not ok:
            return {"backend": "tensorrt", "available": False, "reason": reason}
        return device_info(_import_tensorrt())

    # -- build ---------------------------------------------------------------------
    def _build(self, onnx_path: Path, precision: str, out_dir: Path, *, ranges: Any, options: dict[str, Any]) -> Artifact:
        """Options: int8_mode ("qdq"|"calibrator"), calibrator ("entropy"|"minmax"), qdq_onnx, calib_cache,
        calib_data (ArrayDataset or N,C,H,W array), calib_batch, batch ((min,opt,max)), target (TargetProfile),
        workspace_mb, fp16_rest, timing_cache (path, or False for none), hardware_compatibility, ui.
        """
        from hadmc_deploy.backends.tensorrt_build import BuildRequest, build_engine

        trt = _import_tensorrt()
        ui: UI = options.get("ui") or quiet_ui()
        features = detect_features(trt)
        target = options.get("target")
        fp16_rest = bool(options.get("fp16_rest", target is None or "fp16" in getattr(target, "precisions", ("fp16",))))
        plan = plan_precision(features, precision, options.get("int8_mode", "qdq"), fp16_rest=fp16_rest,
                              calibrator=options.get("calibrator", "entropy"))
        out_dir.mkdir(parents=True, exist_ok=True)
        work = out_dir / "work"
        work.mkdir(exist_ok=True)
        graph, converter = self._graph_for(plan, onnx_path, options, ranges, work)

        batch = options.get("batch") or batch_triple_from_sizes(getattr(target, "batch_sizes", DEFAULT_BATCH_SIZES))
        profile = derive_profile(onnx_input_shapes(graph), tuple(batch))
        device = device_info(trt)
        calibrator, calib_shapes, calibration = None, {}, None
        if plan.calibrator is not None:
            calibrator, calib_shapes, calibration = self._calibrator(trt, plan, profile, options, ranges, out_dir, ui)
        elif plan.onnx_kind.startswith("qdq"):
            calibration = {"kind": "qdq-scales-in-onnx", "sha256": sha256_file(graph)}
        timing = options.get("timing_cache")
        timing_path = None if timing is False else Path(timing) if timing else timing_cache_path(device["gpu_name"], str(trt.__version__))
        if timing_path is not None:
            timing_path.parent.mkdir(parents=True, exist_ok=True)
        request = BuildRequest(
            onnx_path=graph, plan=plan, profile=profile,
            workspace_bytes=int(options.get("workspace_mb", 1024)) << 20,
            timing_cache=timing_path, calibrator=calibrator, calibration_shapes=calib_shapes,
            hardware_compatibility=str(options.get("hardware_compatibility", "none")),
        )
        result = build_engine(trt, request, ui)
        write_bytes_atomic(out_dir / ENGINE_FILE, result.engine)
        if calibration is not None and plan.calibrator is not None:
            cache_file = out_dir / "calibration.cache"
            calibration["sha256"] = sha256_file(cache_file) if cache_file.is_file() else None
            calibration["read_from_cache"] = bool(calibrator.cache.read_from_file)
        metadata = engine_metadata(
            trt_version=str(trt.__version__), device=device, plan=plan.to_dict(), profile=profile,
            inputs=result.inputs, outputs=result.outputs, onnx_path=graph, onnx_sha256=sha256_file(graph),
            calibration=calibration, build_seconds=result.seconds, features=features.to_dict(),
            extra={
                "source_onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
                "fp16_converter": converter,
                "timing_cache": str(timing_path) if timing_path else None,
                "workspace_mb": int(options.get("workspace_mb", 1024)),
                "hardware_compatibility": request.hardware_compatibility,
                "target": getattr(target, "name", None),
                "builder_warnings": result.warnings[:20],
            },
        )
        artifact = Artifact(path=out_dir, model_file=ENGINE_FILE, metadata=metadata)
        try:
            from hadmc_deploy.backends.tensorrt_runtime import EngineSession

            metadata["layers"] = EngineSession(trt, result.engine, str(out_dir / ENGINE_FILE)).layer_summary()
        except Exception as exc:  # the summary is informative only; the engine is already written
            metadata["layers"] = {"layers": None, "int8_layers": None, "reason": f"{type(exc).__name__}: {exc}"}
        artifact.save_metadata()
        if not any(work.iterdir()):
            work.rmdir()  # keep converted graphs only when there are some
        return artifact

    def _graph_for(self, plan: PrecisionPlan, onnx_path: Path, options: dict[str, Any], ranges: Any, work: Path) -> tuple[Path, str | None]:
        """The ONNX graph the plan parses: float, FP16-typed, or the INT8 stage's QDQ graph."""
        from hadmc_deploy.backends.tensorrt_build import fp16_typed_onnx

        if plan.onnx_kind == "float":
            if plan.precision == "int8" and onnx_has_qdq(onnx_path):
                raise UsageError(f"{onnx_path} already holds Q/DQ nodes; the calibrator path needs the float ONNX",
                                 hint="pass model.onnx, or use --int8-mode qdq")
            return onnx_path, None
        if plan.onnx_kind == "fp16-typed":
            return fp16_typed_onnx(onnx_path, work / "model_fp16.onnx")
        qdq = self._qdq_graph(onnx_path, options, ranges, work)
        if plan.onnx_kind == "qdq-fp16-typed":
            try:
                return fp16_typed_onnx(qdq, work / "qdq_s8s8_fp16.onnx", qdq=True)
            except BackendUnavailableError as exc:
                (options.get("ui") or quiet_ui()).warn(f"{exc.one_line()}; the unquantized layers stay FP32")
                return qdq, "none (FP32 for the unquantized rest)"
        return qdq, None

    @staticmethod
    def _qdq_graph(onnx_path: Path, options: dict[str, Any], ranges: Any, work: Path) -> Path:
        if onnx_has_qdq(onnx_path):
            return onnx_path
        explicit = options.get("qdq_onnx")
        candidates = [Path(explicit)] if explicit else [sibling_qdq(onnx_path)]
        for path in candidates:
            if path.is_file():
                return path
        if ranges is not None:
            from hadmc_deploy.calibration.qdq import write_qdq

            return Path(write_qdq(onnx_path, ranges, work / "qdq_s8s8.onnx", form="qdq_s8s8"))
        raise UsageError(f"INT8 with --int8-mode qdq needs the QDQ graph qdq_s8s8.onnx beside {onnx_path.name} (or activation ranges)",
                         hint="run the INT8 stage (`hadmc-deploy build ... --calib DATA`) or use --int8-mode calibrator with --calib-cache")

    @staticmethod
    def _calibrator(trt: Any, plan: PrecisionPlan, profile: dict[str, Any], options: dict[str, Any], ranges: Any,
                    out_dir: Path, ui: UI) -> tuple[Any, dict[str, list[int]], dict[str, Any]]:
        from hadmc_deploy.backends.tensorrt_calibrator import make_calibrator
        from hadmc_deploy.calibration import trt_cache

        if len(profile) != 1:
            raise UsageError(f"the calibrator feeds single-input models; this one has inputs {sorted(profile)}")
        (input_name, shapes), = profile.items()
        cache = out_dir / "calibration.cache"
        source = options.get("calib_cache")
        if source and Path(source).resolve() != cache.resolve():
            shutil.copyfile(source, cache)
        elif not source and ranges is not None:
            trt_cache.write_cache(cache, ranges, trt_version=str(trt.__version__))
        data = options.get("calib_data")
        x = getattr(data, "x", data)
        calib_batch = int(options.get("calib_batch", 32))
        if x is not None:
            calib_batch = max(1, min(calib_batch, int(np.asarray(x).shape[0])))
        with ui.progress("TensorRT calibration", None) as task:
            calibrator = make_calibrator(trt, input_name=input_name, cache_path=cache, data=None if x is None else np.asarray(x),
                                         batch_size=calib_batch, algo=plan.calibrator or "entropy", on_batch=task.advance)
        shape = [calib_batch, *shapes["opt"][1:]] if x is not None else list(shapes["opt"])
        record = {"kind": "implicit-calibrator", "algorithm": plan.calibrator, "cache": str(cache),
                  "source_cache": str(source) if source else None,
                  "data": getattr(data, "source", None), "samples": None if x is None else int(np.asarray(x).shape[0])}
        return calibrator, {input_name: shape}, record

    # -- run and time ------------------------------------------------------------------
    def _session(self, artifact: Artifact) -> Any:
        from hadmc_deploy.backends.tensorrt_runtime import EngineSession

        trt = _import_tensorrt()
        check_compatible(artifact.metadata, device_info(trt), artifact.path)
        return EngineSession(trt, artifact.model_path.read_bytes(), str(artifact.model_path))

    def _run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._session(artifact).run(inputs)

    def _benchmark(self, artifact: Artifact, batch: int, warmup: int, runs: int) -> LatencyStats:
        profile = artifact.metadata.get("profile", {})
        shapes = {}
        for name, p in profile.items():
            lo, hi = p["min"][0], p["max"][0]
            if not lo <= batch <= hi:
                raise UsageError(f"batch {batch} is outside the engine's profile {lo}..{hi} for input {name!r}",
                                 hint="rebuild with --batch MIN,OPT,MAX covering it")
            shapes[name] = (batch, *p["opt"][1:])
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
            artifact = self._build(path, spec.precision, Path(tmp) / "engine", ranges=None,
                                   options={"batch": (spec.batch,) * 3, "int8_mode": "qdq"})
            return self._benchmark(artifact, spec.batch, warmup, runs)
