"""The ONNX Runtime CPU backend: the artifact every machine can build and run.

An artifact is a directory with `model.onnx` (saved after ORT's offline graph
optimization when that is switched on), `metadata.json` (device, precision, I/O,
session options, preprocessing, verification errors, versions, hashes) and
`example.py`, a script that loads and runs the model with onnxruntime alone.

Every session - the deployed one, `bench`, and the per-layer timings behind the
latency tables - is configured by `session_options()`, so a LUT measures the
kernels deployment will run. onnxruntime is imported inside functions only.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hadmc_deploy.errors import ArtifactError, UsageError, VerificationError
from hadmc_deploy.fileio import sha256_file, write_json_atomic, write_text_atomic
from hadmc_deploy.onnx_passes import io_shapes
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import TargetProfile, cpu_model_name, cpu_profile, detect_cpu_isa

from .artifact_dir import replace_dir, staging_dir
from .base import METADATA_FILE, Artifact, Backend, BuildRequest, LatencyStats, register
from .ort_artifact import (
    adhoc_artifact,
    has_quantize_nodes,
    ranges_sha256,
    read_export_record,
    usable_qdq,
    versions,
)
from .ort_example import EXAMPLE_SCRIPT
from .ort_optimizer_choice import artifact_disabled_optimizers, choose_disabled_optimizers
from .ort_session import (  # re-exported: the latency tables import session helpers from here
    DEFAULT_OPT_LEVEL,
    LEVEL_FROM_ORT_NAME,
    OPT_LEVELS,
    ORT_LEVEL_NAMES,
    make_session,
    random_feeds,
    resolve_threads,
    session_options,
    time_session,
)

__all__ = [
    "DEFAULT_OPT_LEVEL",
    "OPT_LEVELS",
    "ORT_LEVEL_NAMES",
    "OnnxRuntimeBackend",
    "adhoc_artifact",
    "make_session",
    "random_feeds",
    "ranges_sha256",
    "resolve_threads",
    "session_options",
    "time_session",
]

MODEL_FILE = "model.onnx"
EXAMPLE_FILE = "example.py"
ARTIFACT_FORMAT = "hadmc-artifact/1"
#: the level the artifact's model.onnx is saved at (None: a byte copy of the verified source).
#: tools/bench_export.py (docs/export.md) measured no run-time gain at any level (ratios to the
#: copy 0.97-1.08, inside this machine's noise: ORT applies the same fusions online) and no
#: consistent start-up gain, while a saved optimized graph carries com.microsoft fused ops tied
#: to this ORT version ("all" also this CPU's NCHWc layout). So it does not help here: the
#: default keeps the artifact's model identical to the verified export; `offline_opt` opts in.
DEFAULT_OFFLINE_LEVEL: str | None = None
#: fp32 tolerance between the source graph and its offline-optimized copy (same math, fused kernels).
OFFLINE_RTOL, OFFLINE_ATOL = 1e-3, 1e-4


@register("onnxruntime")
class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU execution provider."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, float, int, str], Any] = {}

    def available(self) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc}); pip install onnxruntime"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, f"onnxruntime {ort.__version__} has no CPUExecutionProvider"
        return True, f"onnxruntime {ort.__version__}"

    def default_target(self) -> TargetProfile:
        return cpu_profile()

    def describe_device(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "kind": "cpu",
            "name": cpu_model_name(),
            "isa": detect_cpu_isa(),
            "machine": platform.machine(),
            "logical_cpus": os.cpu_count(),
            "onnxruntime": ort.__version__,
            "threads": resolve_threads(None),
            "execution_provider": "CPUExecutionProvider",
        }

    # -- build ------------------------------------------------------------------------
    def _build(self, request: BuildRequest) -> Artifact:
        opts = request.ort
        threads = resolve_threads(opts.threads)
        opt_level = opts.opt_level or DEFAULT_OPT_LEVEL
        if opt_level not in OPT_LEVELS:
            raise UsageError(f"unknown graph optimization level {opt_level!r}", hint=f"use one of {', '.join(OPT_LEVELS)}")
        offline = opts.offline_opt if opts.offline_opt is not None else DEFAULT_OFFLINE_LEVEL
        if offline is not None and offline not in OPT_LEVELS[1:]:
            raise UsageError(f"unknown offline optimization level {offline!r}", hint="use basic, extended, all or None")
        onnx_path, precision, out_dir = request.onnx_path, request.precision, request.out_dir
        source = onnx.load(str(onnx_path), load_external_data=False)
        export_record = read_export_record(source)
        prequantized = has_quantize_nodes(source)
        if precision == "fp16":
            raise UsageError("the ONNX Runtime CPU backend has no fast fp16 kernels", hint="build fp32 or int8 for --target cpu")
        if precision == "fp32" and prequantized:
            raise UsageError(f"{onnx_path} is already quantized (it has QuantizeLinear nodes)", hint="build it with precision int8")
        int8_form = request.target.int8_form
        given_qdq = None
        if precision == "int8" and not prequantized:
            given_qdq = usable_qdq(request)
            if given_qdq is None and request.ranges is None:
                raise UsageError("an int8 build of a float ONNX needs calibration ranges (or a QDQ graph in ONNX Runtime's form)",
                                 hint="pass --calib DATA (BuildRequest.ranges)")
        with staging_dir(out_dir) as staging:
            to_deploy = onnx_path
            quantized_by = "source (already quantized)" if prequantized else None
            if given_qdq is not None:
                to_deploy = given_qdq
                quantized_by = f"the request's QDQ graph {given_qdq.name} ({int8_form}, onnxruntime placement)"
            elif precision == "int8" and not prequantized:
                from hadmc_deploy.calibration.qdq import cpu_reduce_range, write_qdq

                to_deploy = staging / "qdq.onnx"
                # ORT's own Q/DQ placement: its CPU kernels fuse it; TensorRT's placement ran 0.4-0.8x FP32 here.
                write_qdq(
                    onnx_path,
                    request.ranges,
                    to_deploy,
                    form=int8_form,
                    float_nodes=request.float_nodes,
                    placement="onnxruntime",
                    reduce_range=cpu_reduce_range(detect_cpu_isa()),
                )
                quantized_by = f"hadmc_deploy.calibration.qdq.write_qdq ({int8_form})"
            model_path = staging / MODEL_FILE
            offline_err = self._write_model(to_deploy, model_path, offline, threads, check_numerics=precision == "fp32")
            if to_deploy.parent == staging:
                to_deploy.unlink()
            deployed = onnx.load(str(model_path), load_external_data=False)
            inputs, outputs = io_shapes(deployed)
            disabled, disabled_measured = choose_disabled_optimizers(model_path, threads, opt_level) if precision == "int8" else ([], None)
            metadata = {
                "format": ARTIFACT_FORMAT,
                "target": request.target.name,
                "backend": self.name,
                "backend_version": versions()["onnxruntime"],
                "device": self.describe_device(),
                "precision": precision,
                "int8_form": int8_form if precision == "int8" and not prequantized else None,
                "float_nodes": list(request.float_nodes),
                "quantized_by": quantized_by,
                "input_name": inputs[0]["name"],
                "output_name": outputs[0]["name"],
                "inputs": inputs,
                "outputs": outputs,
                "preprocess": request.preprocess,
                "verification": request.verification or export_record.get("verification"),
                "export": {k: v for k, v in export_record.items() if k != "verification"} or None,
                "session_options": {
                    "execution_provider": "CPUExecutionProvider",
                    "intra_op_num_threads": threads,
                    "inter_op_num_threads": 1,
                    "execution_mode": "ORT_SEQUENTIAL",
                    "graph_optimization_level": ORT_LEVEL_NAMES[opt_level],
                    "offline_optimization": ORT_LEVEL_NAMES[offline] if offline else None,
                    "offline_max_abs_err": offline_err,
                    "disabled_optimizers": disabled,
                    "disabled_optimizers_measured": disabled_measured,
                },
                "versions": versions(),
                "hashes": {
                    "source_onnx_sha256": sha256_file(onnx_path),
                    "ranges_sha256": ranges_sha256(request.ranges),
                    "qdq_graph_sha256": sha256_file(given_qdq) if given_qdq is not None else None,
                    "model_sha256": sha256_file(model_path),
                },
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "extra": dict(request.extra),
                "model_file": MODEL_FILE,
            }
            write_json_atomic(staging / METADATA_FILE, metadata)
            write_text_atomic(staging / EXAMPLE_FILE, EXAMPLE_SCRIPT)
            replace_dir(staging, out_dir)
        return Artifact.load(out_dir)

    def _write_model(self, source: Path, dest: Path, offline: str | None, threads: int, *, check_numerics: bool) -> float | None:
        """Save `source` to `dest`, through ORT's offline optimizer at level `offline` when set.

        Returns the max abs difference between source and optimized outputs (fp32 only),
        raising VerificationError if the optimizer changed the numbers.
        """
        if offline is None:
            shutil.copyfile(source, dest)
            return None
        make_session(source, threads, offline, optimized_model_path=dest)
        if not dest.is_file():
            raise ArtifactError(f"ONNX Runtime did not write the optimized model {dest}")
        if not check_numerics:
            return None
        ref_sess, opt_sess = make_session(source, threads, "disable"), make_session(dest, threads, DEFAULT_OPT_LEVEL)
        feeds = random_feeds(ref_sess, batch=None)
        worst = 0.0
        for ref, got in zip(ref_sess.run(None, feeds), opt_sess.run(None, feeds), strict=True):
            diff = np.abs(ref.astype(np.float64) - got)
            if not np.all(diff <= OFFLINE_ATOL + OFFLINE_RTOL * np.abs(ref)):
                raise VerificationError(f"ORT's offline optimization changed the outputs (max abs err {diff.max():.3g})", hint="build with offline_opt=None")
            worst = max(worst, float(diff.max()))
        return worst

    # -- run and time -------------------------------------------------------------------
    def release_sessions(self) -> None:
        """Drop every kept session, so that the next model is timed with one session alive, as in
        a service and as the latency table times whole models: an idle session keeps its spinning
        worker threads, and beside the idle sessions of a build's other artifacts the pruned INT8
        and mixed artifacts ran 1.08-1.37x slower in the median round, the demo's INT8 and mixed
        originals 1.13x and 1.33x, a ResNet-18's 1.00-1.03x, FP32 ones 0.97-1.05x
        (tools/bench_sessions_alive.py, docs/sessions_alive.txt)."""
        self._sessions.clear()

    def _session(self, artifact: Artifact) -> Any:
        sess_meta = artifact.metadata.get("session_options") or {}
        threads = resolve_threads(sess_meta.get("intra_op_num_threads"))
        level = LEVEL_FROM_ORT_NAME.get(sess_meta.get("graph_optimization_level"), DEFAULT_OPT_LEVEL)
        disabled = tuple(artifact_disabled_optimizers(artifact.metadata))
        path = artifact.model_path
        key = (str(path.resolve()), path.stat().st_mtime, threads, level, disabled)
        if key not in self._sessions:
            try:
                self._sessions[key] = make_session(path, threads, level, disabled_optimizers=disabled)
            except UsageError:
                raise
            except Exception as exc:
                raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:300]}", hint="rebuild the artifact") from exc
        return self._sessions[key]

    def _run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._session(artifact)
        expected = [i.name for i in session.get_inputs()]
        missing = [name for name in expected if name not in inputs]
        extra = [name for name in inputs if name not in expected]
        if missing or extra:
            raise UsageError(f"inputs {sorted(inputs)} do not match the model's {expected}", hint=f"pass exactly {', '.join(expected)}")
        feeds = {name: np.ascontiguousarray(inputs[name], dtype=np.float32) for name in expected}
        names = [o.name for o in session.get_outputs()]
        try:
            results = session.run(names, feeds)
        except Exception as exc:
            shapes = {k: v.shape for k, v in feeds.items()}
            raise UsageError(f"ONNX Runtime rejected inputs of shape {shapes}: {str(exc).splitlines()[0][:200]}", hint="check the input shape in metadata.json") from exc
        return dict(zip(names, results, strict=True))

    def _benchmark(self, artifact: Artifact, batch: int, warmup: int, runs: int) -> LatencyStats:
        session = self._session(artifact)
        return time_session(session, random_feeds(session, batch=batch), warmup, runs, batch)

    def _measure_layer(self, spec: LayerSpec, warmup: int, runs: int) -> LatencyStats:
        from hadmc_deploy.layer_onnx import layer_model

        if spec.precision == "fp16":
            raise UsageError("the ONNX Runtime CPU backend has no fast fp16 kernels to measure", hint="measure fp32 or int8 layers")
        int8_form = cpu_profile().int8_form if spec.precision == "int8" else None
        model = layer_model(spec, int8_form=int8_form, opset=18)
        session = make_session(model.SerializeToString())
        # random_feeds draws int8/uint8 inputs too (INT8 timing graphs take quantized input).
        return time_session(session, random_feeds(session, batch=spec.batch), warmup, runs, spec.batch)
