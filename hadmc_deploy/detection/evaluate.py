"""mAP of a detector, run the way it deploys: PyTorch, an ONNX file in ONNX Runtime, or an artifact.

All three feed the same decoder and metric, so the numbers of a build's variants differ only
by what the variants compute. Multi-output models are read by output name: `output_names`
picks the head maps (in any order: the decoder reads each map's stride from its size);
left empty, every output of the model is taken as a head map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.detection.dataset import DetectionDataset
from hadmc_deploy.detection.decode import DecodeOptions, Detections, decode
from hadmc_deploy.detection.metrics import MapResult, mean_average_precision
from hadmc_deploy.errors import DataError
from hadmc_deploy.ui import UI, quiet_ui

EVAL_BATCH = 64


@dataclass(frozen=True)
class DetectionEvalOptions:
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    batch_size: int = EVAL_BATCH
    output_names: tuple[str, ...] = ()  # empty: every model output is a head map


def pick_outputs(outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
    """The head maps among a model's named outputs; a missing name is a one-line error."""
    if not names:
        return list(outputs.values())
    missing = [n for n in names if n not in outputs]
    if missing:
        raise DataError(f"the model has no output {missing[0]!r}", hint=f"its outputs are {', '.join(outputs)}")
    return [outputs[n] for n in names]


def predict(run_batch: Callable[[np.ndarray], Mapping[str, np.ndarray]], data: DetectionDataset, options: DetectionEvalOptions, ui: UI, desc: str) -> list[Detections]:
    """Decoded detections for every image; `run_batch` maps a float32 batch to named outputs."""
    detections: list[Detections] = []
    n_batches = (len(data) + options.batch_size - 1) // options.batch_size
    with ui.progress(desc, n_batches) as task:
        for xb, _ in data.batches(options.batch_size):
            maps = pick_outputs(run_batch(np.ascontiguousarray(xb, dtype=np.float32)), options.output_names)
            detections.extend(decode(maps, data.input_hw, options.decode))
            task.advance()
    return detections


def score(detections: list[Detections], data: DetectionDataset) -> MapResult:
    return mean_average_precision(detections, data.labels, data.num_classes, max_detections=DecodeOptions().max_detections)


def torch_map(model: Any, data: DetectionDataset, options: DetectionEvalOptions = DetectionEvalOptions(), ui: UI | None = None) -> MapResult:
    """mAP of a PyTorch detector in eval mode (outputs named output, output_1, ... as export names them)."""
    import torch

    from hadmc_deploy.onnx_verify import flatten_outputs

    was_training = model.training
    model.eval()

    def run(xb: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = flatten_outputs(model(torch.from_numpy(xb)))
        return {("output" if i == 0 else f"output_{i}"): o.numpy() for i, o in enumerate(outs)}

    try:
        return score(predict(run, data, options, ui or quiet_ui(), "mAP (torch)"), data)
    finally:
        model.train(was_training)


def onnx_map(onnx_path: str | Path, data: DetectionDataset, options: DetectionEvalOptions = DetectionEvalOptions(), ui: UI | None = None) -> MapResult:
    """mAP of an ONNX file (float or QDQ) in an ONNX Runtime CPU session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    fixed = sess.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) and fixed > 0 else None

    def run(xb: np.ndarray) -> dict[str, np.ndarray]:
        if fixed is None or len(xb) == fixed:
            return dict(zip(names, sess.run(names, {input_name: xb}), strict=True))
        if fixed != 1:
            raise DataError(f"{Path(onnx_path).name} takes a fixed batch of {fixed}", hint="export it with a dynamic batch")
        per_image = [sess.run(names, {input_name: xb[i : i + 1]}) for i in range(len(xb))]
        return {n: np.concatenate([r[k] for r in per_image]) for k, n in enumerate(names)}

    return score(predict(run, data, options, ui or quiet_ui(), f"mAP {Path(onnx_path).name}"), data)


def artifact_map(backend: Any, artifact: Any, data: DetectionDataset, options: DetectionEvalOptions = DetectionEvalOptions(), ui: UI | None = None) -> MapResult:
    """mAP of a built artifact run through its backend's `run` (named outputs)."""
    input_name = str(artifact.metadata.get("input_name") or "input")

    def run(xb: np.ndarray) -> dict[str, np.ndarray]:
        return backend.run(artifact, {input_name: xb})

    return score(predict(run, data, options, ui or quiet_ui(), f"mAP {artifact.path.name}"), data)
