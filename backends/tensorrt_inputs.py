"""What a TensorRT build parses and calibrates with, chosen from the typed BuildRequest.

INT8 has two inputs on TensorRT: a QDQ graph (explicit quantization, every release
from 8.6 to 11) or the implicit calibrator (8.6-10.x) fed by a calibration cache or
by calibration data. `int8_mode` "auto" takes the QDQ graph when the request has one
(or ranges to render it) and otherwise the calibrator where this TensorRT still has
one. Calibration inputs are checked against the engine input here, before the build:
inside the build TensorRT's trampolines swallow every error the calibrator raises.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.backends.tensorrt_artifact import onnx_has_qdq, onnx_input_shapes
from hadmc_deploy.backends.tensorrt_features import PrecisionPlan, TrtFeatures
from hadmc_deploy.errors import BackendUnavailableError, DataError, UsageError
from hadmc_deploy.ui import UI


def choose_int8_mode(features: TrtFeatures, request: BuildRequest) -> str:
    """"qdq" or "calibrator" for an INT8 request (the explicit `int8_mode`, or the "auto" choice)."""
    mode = request.trt.int8_mode
    if mode != "auto":
        return mode
    if request.qdq_graph is not None or request.ranges is not None or onnx_has_qdq(request.onnx_path):
        return "qdq"
    if features.implicit_calibration and (request.calibration_cache is not None or request.calibration_data is not None):
        return "calibrator"
    return "qdq"  # the path every release has; qdq_graph() says what is missing


def qdq_graph(request: BuildRequest, work: Path) -> Path:
    """The QDQ graph to parse: the float graph if it already is one, the request's, or one rendered from ranges."""
    if onnx_has_qdq(request.onnx_path):
        return request.onnx_path
    if request.qdq_graph is not None:
        return request.qdq_graph
    if request.ranges is not None:
        from hadmc_deploy.calibration.qdq import write_qdq

        return Path(write_qdq(request.onnx_path, request.ranges, work / "qdq_s8s8.onnx", form="qdq_s8s8",
                              float_nodes=request.float_nodes, placement="tensorrt"))
    raise UsageError("INT8 by explicit quantization needs the QDQ graph (qdq_s8s8.onnx) or activation ranges",
                     hint="run the INT8 stage (`hadmc-deploy build ... --calib DATA`), or use --int8-mode calibrator with calibration.cache (TensorRT <= 10)")


def graph_for(plan: PrecisionPlan, request: BuildRequest, work: Path, ui: UI) -> tuple[Path, str | None]:
    """(ONNX graph the plan parses: float, FP16-typed or QDQ; the FP16 converter used, if any)."""
    from hadmc_deploy.backends.tensorrt_build import fp16_typed_onnx

    onnx_path = request.onnx_path
    if plan.onnx_kind == "float":
        if onnx_has_qdq(onnx_path):
            raise UsageError(f"{onnx_path} already holds Q/DQ nodes; {plan.path} needs the float ONNX",
                             hint="pass model.onnx as the float graph (the QDQ graph goes in qdq_graph)")
        return onnx_path, None
    if plan.onnx_kind == "fp16-typed":
        return fp16_typed_onnx(onnx_path, work / "model_fp16.onnx")
    qdq = qdq_graph(request, work)
    if plan.onnx_kind == "qdq-fp16-typed":
        try:
            return fp16_typed_onnx(qdq, work / "qdq_s8s8_fp16.onnx", qdq=True)
        except BackendUnavailableError as exc:
            ui.warn(f"{exc.one_line()}; the unquantized layers stay FP32")
            return qdq, "none (FP32 for the unquantized rest)"
    return qdq, None


@dataclass
class Calibration:
    """The implicit calibrator and what the build records about it."""

    calibrator: Any
    #: input name -> calibration profile shape ({} for a static input: the network's own shape is used).
    shapes: dict[str, list[int]]
    record: dict[str, Any]
    #: tensors the cache names (calibration from a cache only), to list layers it leaves unscaled.
    cache_scales: frozenset[str] | None = None
    notes: list[str] = field(default_factory=list)


def calibration_batch(graph: Path, profile: dict[str, dict[str, list[int]]], x: np.ndarray | None, wanted: int) -> tuple[str, int, bool]:
    """(input name, calibration batch, whether the input's batch is static), after checking `x` fits the input.

    Why here: TensorRT reads `batch x C x H x W` floats from the calibrator's pointer; data of
    another per-sample shape is read past its buffer (garbage scales or an illegal access),
    and a static-batch input accepts only its own batch.
    """
    if len(profile) != 1:
        raise UsageError(f"the calibrator feeds single-input models; this one has inputs {sorted(profile)}")
    (name, shapes), = profile.items()
    lead = onnx_input_shapes(graph)[name][0]
    static = isinstance(lead, int) and lead >= 1
    if x is None:
        return name, int(shapes["opt"][0]), static
    if x.ndim != len(shapes["opt"]) or list(x.shape[1:]) != list(shapes["opt"][1:]):
        raise DataError(f"calibration data has samples of shape {tuple(x.shape[1:])}; engine input {name!r} takes {tuple(shapes['opt'][1:])}",
                        hint="calibrate with data preprocessed to the model's input shape (--input-shape / resize)")
    if static:
        if x.shape[0] < lead:
            raise DataError(f"input {name!r} has a fixed batch of {lead}; the calibration data has only {x.shape[0]} samples",
                            hint="pass at least one full batch of calibration samples")
        return name, int(lead), True
    return name, max(1, min(wanted, int(x.shape[0]))), False


def prepare_calibration(trt: Any, plan: PrecisionPlan, graph: Path, profile: dict[str, dict[str, list[int]]],
                        request: BuildRequest, staging: Path, ui: UI) -> Calibration:
    """The calibrator for `plan`, over data (fresh calibration on the GPU) or a cache (ours or the request's).

    The cache lives in the staging directory, so a previous build's calibration.cache is never read.
    """
    from hadmc_deploy.backends.tensorrt_calibrator import CalibrationCacheFile, make_calibrator
    from hadmc_deploy.calibration import trt_cache

    data = request.calibration_data
    x = None if data is None else np.asarray(getattr(data, "x", data), dtype=np.float32)
    name, batch, static = calibration_batch(graph, profile, x, request.trt.calib_batch)
    cache = staging / "calibration.cache"
    if x is not None:
        source = "device calibration on the request's data"
    elif request.calibration_cache is not None:
        shutil.copyfile(request.calibration_cache, cache)
        source = f"cache {request.calibration_cache}"
    elif request.ranges is not None:
        trt_cache.write_cache(cache, request.ranges, trt_version=str(trt.__version__))
        source = "cache from the request's activation ranges"
    else:
        raise UsageError("INT8 with the calibrator needs calibration data, a calibration.cache or activation ranges",
                         hint="pass --calib DATA or --calib-cache FILE")
    scales = None
    if x is None:
        # Read it now: inside the build a bad cache would only print to stderr.
        CalibrationCacheFile(cache, str(trt.__version__), plan.calibrator or "entropy").read()
        scales = frozenset(trt_cache.read_cache(cache))
    with ui.progress("TensorRT calibration", None) as task:
        calibrator = make_calibrator(trt, input_name=name, cache_path=cache, data=x, batch_size=batch,
                                     algo=plan.calibrator or "entropy", on_batch=task.advance)
    shapes = {} if static else {name: [batch, *profile[name]["opt"][1:]]}
    record = {"kind": "implicit-calibrator", "algorithm": plan.calibrator, "source": source,
              "source_cache": str(request.calibration_cache) if request.calibration_cache and x is None else None,
              "data": getattr(data, "source", None), "samples": None if x is None else int(x.shape[0]),
              "batch": batch, "static_batch": static}
    return Calibration(calibrator, shapes, record, scales)
