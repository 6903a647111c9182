"""ONNX Runtime artifact helpers: hashes, the export record, ad-hoc artifacts, and which QDQ graph ORT takes.

Split from `onnxruntime.py` (the backend class) so each stays short; everything here
is re-exported there.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hadmc_deploy import __version__
from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.onnx_passes import io_shapes

from .base import Artifact, BuildRequest
from .ort_session import DEFAULT_OPT_LEVEL, ORT_LEVEL_NAMES, resolve_threads


# -- hashes and metadata helpers ------------------------------------------------------------
def ranges_sha256(ranges: Any) -> str | None:
    """Hash of the calibration content (tensors, method, samples, input hashes), not of its timestamp."""
    if ranges is None:
        return None
    if isinstance(ranges, (str, Path)):
        return sha256_file(ranges)
    data = ranges.to_dict() if hasattr(ranges, "to_dict") else dict(ranges)
    data = {k: v for k, v in data.items() if k not in ("created", "versions")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def read_export_record(model: onnx.ModelProto) -> dict[str, Any]:
    """What `export_onnx` stored in the model's metadata_props (verification errors, exporter), if anything."""
    from hadmc_deploy.export import EXPORT_RECORD_KEY

    for prop in model.metadata_props:
        if prop.key == EXPORT_RECORD_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError:
                return {}
    return {}


def has_quantize_nodes(model: onnx.ModelProto) -> bool:
    return any(node.op_type in ("QuantizeLinear", "QLinearConv", "DynamicQuantizeLinear") for node in model.graph.node)


def versions() -> dict[str, str]:
    import onnxruntime as ort

    return {"hadmc_deploy": __version__, "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__, "python": platform.python_version()}


def adhoc_artifact(onnx_path: str | Path, threads: int | None = None) -> Artifact:
    """Wrap a bare .onnx file as an in-memory artifact (for `bench model.onnx`); nothing is written."""
    path = Path(onnx_path)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from exc
    inputs, outputs = io_shapes(model)
    return Artifact(
        path=path.parent,
        model_file=path.name,
        metadata={
            "backend": "onnxruntime",
            "precision": "int8" if has_quantize_nodes(model) else "fp32",
            "inputs": inputs,
            "outputs": outputs,
            "input_name": inputs[0]["name"] if inputs else None,
            "output_name": outputs[0]["name"] if outputs else None,
            "session_options": {"intra_op_num_threads": resolve_threads(threads), "graph_optimization_level": ORT_LEVEL_NAMES[DEFAULT_OPT_LEVEL]},
            "adhoc": True,
        },
    )


def usable_qdq(request: BuildRequest) -> Path | None:
    """The request's QDQ graph when it is in this target's form and ONNX Runtime's placement, else None.

    `write_qdq` records form and placement in the graph; a TensorRT-placed graph runs
    mostly in float here (docs/int8.md), so it is re-rendered from the ranges instead.
    A graph without the record was quantized elsewhere and is taken as the caller's choice.
    """
    if request.qdq_graph is None:
        return None
    props = {p.key: p.value for p in onnx.load(str(request.qdq_graph), load_external_data=False).metadata_props}
    form, placement = props.get("hadmc.int8_form"), props.get("hadmc.qdq_placement")
    if form is None and placement is None:
        return request.qdq_graph
    if form == request.target.int8_form and placement == "onnxruntime":
        return request.qdq_graph
    if request.ranges is None:
        raise UsageError(f"QDQ graph {request.qdq_graph.name} is in form {form} with {placement} placement; "
                         f"ONNX Runtime on {request.target.name} runs {request.target.int8_form} with onnxruntime placement",
                         hint="pass the activation ranges (BuildRequest.ranges) so the backend renders its own QDQ graph")
    return None

