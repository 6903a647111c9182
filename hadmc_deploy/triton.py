"""Triton Inference Server model repository from a built artifact.

Layout Triton loads (https://github.com/triton-inference-server/server docs, "Model Repository"):

    REPO/<name>/config.pbtxt
    REPO/<name>/1/model.plan      (TensorRT engine, platform "tensorrt_plan")
    REPO/<name>/1/model.onnx      (ONNX Runtime artifact, platform "onnxruntime_onnx")

config.pbtxt is protobuf text format of Triton's ModelConfig. With max_batch_size > 0
Triton owns the batch axis, so `dims` list the shape without it; the engine's
optimization profile (or the ONNX graph's dynamic batch axis) must allow
max_batch_size. An engine whose batch dimension is fixed has no batch axis for
Triton to own: it gets max_batch_size 0 and its full dims (Triton rejects a
batching config for it). Written by hand because the schema needed is a handful of
fields and Triton's own client package pins protobuf and ml-dtypes versions the
rest of the project cannot take.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from hadmc_deploy.backends.base import Artifact
from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers
from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.fileio import atomic_path, write_text_atomic

#: our dtype names (TensorRT DataType members, numpy / ONNX names) -> Triton TYPE_*.
TRITON_TYPES = {
    "FLOAT": "TYPE_FP32", "float32": "TYPE_FP32", "float": "TYPE_FP32",
    "HALF": "TYPE_FP16", "float16": "TYPE_FP16",
    "BF16": "TYPE_BF16", "bfloat16": "TYPE_BF16",
    "INT8": "TYPE_INT8", "int8": "TYPE_INT8",
    "UINT8": "TYPE_UINT8", "uint8": "TYPE_UINT8",
    "INT32": "TYPE_INT32", "int32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "int64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL", "bool": "TYPE_BOOL",
    "double": "TYPE_FP64", "float64": "TYPE_FP64",
}
PLATFORMS = {"tensorrt": ("tensorrt_plan", "model.plan", "KIND_GPU"), "onnxruntime": ("onnxruntime_onnx", "model.onnx", "KIND_CPU")}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _onnx_io(onnx_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX graph: name, dtype name, dims (-1 for a dynamic axis)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def describe(v: Any) -> dict[str, Any]:
        elem = v.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "float32"
        dims = [int(d.dim_value) if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "dtype": dtype, "shape": dims}

    inputs = [describe(v) for v in model.graph.input if v.name not in inits]
    return inputs, [describe(v) for v in model.graph.output]


def batch_is_dynamic(inputs: list[dict[str, Any]]) -> bool:
    """Every input has a leading dynamic axis (-1): the only case Triton may batch."""
    return bool(inputs) and all(t["shape"] and int(t["shape"][0]) < 1 for t in inputs)


def artifact_io(artifact: Artifact) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int | None]:
    """(inputs, outputs, largest batch the artifact accepts: None when unbounded, 0 when the batch is fixed)."""
    if artifact.backend == "tensorrt":
        meta = artifact.metadata
        if "inputs" not in meta or "outputs" not in meta:
            raise ArtifactError(f"{artifact.path}/metadata.json lacks the engine's inputs/outputs")
        inputs = list(meta["inputs"])
        if not batch_is_dynamic(inputs):
            return inputs, list(meta["outputs"]), 0
        profile = meta.get("profile") or {}
        max_batch = min((int(p["max"][0]) for p in profile.values()), default=None)
        return inputs, list(meta["outputs"]), max_batch
    inputs, outputs = _onnx_io(artifact.model_path)
    return inputs, outputs, None


def _dims_without_batch(tensor: dict[str, Any], batched: bool) -> list[int]:
    shape = [int(d) for d in tensor["shape"]]
    if batched:
        if not shape:
            raise ArtifactError(f"tensor {tensor['name']!r} has no batch axis; use max_batch_size 0")
        shape = shape[1:]
    return shape


def _tensor_block(tensor: dict[str, Any], batched: bool) -> str:
    dtype = str(tensor.get("dtype", "FLOAT"))
    if dtype not in TRITON_TYPES:
        raise ArtifactError(f"tensor {tensor['name']!r} has type {dtype}, which has no Triton equivalent here")
    dims = ", ".join(str(d) for d in _dims_without_batch(tensor, batched))
    return f'  {{\n    name: "{tensor["name"]}"\n    data_type: {TRITON_TYPES[dtype]}\n    dims: [ {dims} ]\n  }}'


def render_config(
    name: str,
    platform: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    *,
    max_batch_size: int,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 100,
    instance_kind: str = "KIND_GPU",
    instance_count: int = 1,
) -> str:
    """config.pbtxt text. max_batch_size 0 means the artifact's shapes are used as they are (no batching)."""
    batched = max_batch_size > 0
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}"]
    lines.append("input [\n" + ",\n".join(_tensor_block(t, batched) for t in inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(t, batched) for t in outputs) + "\n]")
    if batched:
        preferred = sorted({b for b in (preferred_batch_sizes or []) if 1 < b <= max_batch_size})
        block = ["dynamic_batching {"]
        if preferred:
            block.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]")
        block.append(f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}")
        block.append("}")
        lines.append("\n".join(block))
    lines.append(f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {instance_kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def write_triton_repo(
    repo_dir: str | Path,
    artifact: Artifact,
    name: str,
    *,
    version: int = 1,
    max_batch_size: int | None = None,
    preferred_batch_sizes: list[int] | None = None,
    max_queue_delay_us: int = 100,
) -> Path:
    """Lay out `repo_dir/<name>/` for `artifact`; returns the model directory.

    `max_batch_size` defaults to the engine profile's largest batch (TensorRT) or 32
    for an ONNX model whose batch axis is dynamic (0 when it is fixed).
    """
    if not _NAME.match(name):
        raise UsageError(f"Triton model name {name!r} may only hold letters, digits, '_', '.' and '-'")
    if version < 1:
        raise UsageError(f"Triton model version must be >= 1, got {version}")
    if artifact.backend not in PLATFORMS:
        raise ArtifactError(f"artifact {artifact.path} was built by {artifact.backend or 'an unknown backend'!r}; "
                            f"Triton layouts exist for {', '.join(PLATFORMS)}")
    platform, model_file, kind = PLATFORMS[artifact.backend]
    inputs, outputs, profile_max = artifact_io(artifact)
    batch_dynamic = batch_is_dynamic(inputs)
    if max_batch_size is None:
        max_batch_size = profile_max if profile_max is not None else (32 if batch_dynamic else 0)
    if max_batch_size < 0:
        raise UsageError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if profile_max == 0 and max_batch_size > 0:
        raise UsageError(f"the engine's batch dimension is fixed (input shape {inputs[0]['shape']}); Triton batching needs a dynamic one",
                         hint="use max_batch_size 0, or rebuild from an ONNX with a dynamic batch axis")
    if profile_max is not None and max_batch_size > profile_max:
        raise UsageError(f"max_batch_size {max_batch_size} exceeds the engine's profile maximum {profile_max}",
                         hint="rebuild the engine with --batch MIN,OPT,MAX covering it")
    if max_batch_size > 0 and profile_max is None and not batch_dynamic:
        raise UsageError("the ONNX model has a fixed batch axis; Triton batching needs a dynamic one", hint="use max_batch_size 0")
    text = render_config(name, platform, inputs, outputs, max_batch_size=max_batch_size,
                         preferred_batch_sizes=preferred_batch_sizes, max_queue_delay_us=max_queue_delay_us, instance_kind=kind)
    text = _unsupported_session_options_note(artifact) + text
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(version_dir / model_file) as tmp:
        shutil.copyfile(artifact.model_path, tmp)
    write_text_atomic(model_dir / "config.pbtxt", text)
    return model_dir


def _unsupported_session_options_note(artifact: Artifact) -> str:
    """A comment heading config.pbtxt when the artifact was measured faster with ORT graph
    transformers disabled: Triton's onnxruntime backend has no setting for that, so the served
    model runs with them (slower by what metadata.json records)."""
    disabled = artifact_disabled_optimizers(artifact.metadata)
    if not disabled:
        return ""
    measured = artifact.metadata["session_options"].get("disabled_optimizers_measured") or {}
    times = ""
    if measured.get("default_ms") and measured.get("without_qdq_propagation_ms"):
        times = f" (measured {measured['without_qdq_propagation_ms']:.3f} ms without, {measured['default_ms']:.3f} ms with, batch {measured.get('batch', 1)})"
    return (f"# note: hadmc-deploy measured this model faster with the ONNX Runtime optimizer(s) {', '.join(disabled)} disabled{times};\n"
            "# Triton's onnxruntime backend cannot disable them, so this server runs them (see the artifact's example.py).\n")

