"""Collect activation ranges by running the float ONNX model in ONNX Runtime.

Every float intermediate tensor is exposed as an extra graph output (the same
"augmented model" trick onnxruntime's calibrators use), the calibration batches run
through one session, and each tensor's batches feed one observer. Ranges are keyed by
the tensor names of the float model, which is exactly what `write_qdq` quantizes.

Written instead of onnxruntime's `create_calibrator` because we need TensorRT's
entropy algorithm (ORT's differs), the NaN/Inf check that names the tensor, a progress
bar, and the result as our `ActivationRanges`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from hadmc_deploy.calibration.observers import DEFAULT_PERCENTILE, make_observer
from hadmc_deploy.calibration.ranges import ActivationRanges, TensorRange
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import DataError
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.ui import UI, quiet_ui

MIN_CALIBRATION_SAMPLES = 16  # fewer images give thresholds that are mostly noise
METHODS = ("entropy", "minmax", "percentile")
_BATCH_BYTES = 256 << 20  # activations of one calibration batch, all tensors together


def calibration_subset(data: ArrayDataset, num_samples: int) -> ArrayDataset:
    """The samples calibration uses: a fixed, seeded subset of `num_samples` (all when fewer)."""
    if num_samples < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"--calib-samples {num_samples} is too few", hint=f"calibration needs at least {MIN_CALIBRATION_SAMPLES} samples; 512 is the default")
    if len(data) < MIN_CALIBRATION_SAMPLES:
        raise DataError(
            f"calibration data {data.source} has only {len(data)} samples",
            hint=f"calibration needs at least {MIN_CALIBRATION_SAMPLES} (512 recommended); pass a larger --calib set",
        )
    return data.subset(num_samples)


def float_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs of float type, in graph order (constants excluded)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    constant = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in constant]
    for node in model.graph.node:
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            constant.update(node.output)  # weights reached through Identity/Reshape are not activations
            continue
        names.extend(out for out in node.output if out)
    return [n for n in names if types.get(n) == onnx.TensorProto.FLOAT]


def check_input_shape(model: onnx.ModelProto, data: ArrayDataset) -> str:
    """The model's single input name; raises DataError when the data cannot feed it."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise DataError(f"calibration supports models with one input; this one has {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    want, got = dims[1:], list(data.x.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
        shown = "x".join("?" if w is None else str(w) for w in want)
        raise DataError(
            f"calibration data {data.source} has samples of shape {'x'.join(map(str, got))} but the model takes {shown}",
            hint="pass --resize/--channels so the data matches the model input",
        )
    return inputs[0].name


def collect_ranges(
    onnx_path: str | Path,
    data: ArrayDataset,
    method: str = "entropy",
    num_samples: int = 512,
    percentile: float = DEFAULT_PERCENTILE,
    ui: UI | None = None,
) -> ActivationRanges:
    """Run `num_samples` calibration samples through the model and return each float tensor's range."""
    import onnxruntime as ort

    ui = ui or quiet_ui()
    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    model = onnx.load(str(onnx_path))
    input_name = check_input_shape(model, data)
    subset = calibration_subset(data, num_samples)
    if len(subset) < num_samples:
        ui.warn(f"calibration data has {len(subset)} samples, fewer than the {num_samples} asked for; using all of them")
    names = float_tensor_names(model)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    # No graph rewrites: every tensor must be computed exactly as the float model defines it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="hadmc-calib-") as tmp:
        augmented = Path(tmp) / "augmented.onnx"
        onnx.save(model, str(augmented))
        session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    observers = {name: make_observer(method, percentile) for name in names}
    # A model exported with a fixed batch takes only batches of exactly that size.
    static_batch = session.get_inputs()[0].shape[0]
    static_batch = static_batch if isinstance(static_batch, int) and static_batch > 0 else None
    if static_batch is not None and len(subset) < static_batch:
        raise DataError(f"the model takes a fixed batch of {static_batch}, more than the {len(subset)} calibration samples", hint=f"pass at least {static_batch} samples")
    batch_size = static_batch or 1
    limit = len(subset) - len(subset) % static_batch if static_batch else len(subset)
    done = 0
    with ui.progress(f"calibrate ({method})", limit) as task:
        while done < limit:
            xb = subset.x[done : done + batch_size]
            outputs = session.run(output_names, {input_name: xb})
            by_name = dict(zip(output_names, outputs, strict=True))
            for name in names:  # graph order, so the first non-finite tensor is the one named
                value = by_name[name]
                if not np.isfinite(value).all():
                    bad = int(np.argwhere(~np.isfinite(value).reshape(len(xb), -1).all(axis=1))[0, 0]) + done
                    raise DataError(
                        f"tensor {name!r} holds NaN/Inf on calibration sample {bad}",
                        hint="check the model weights and the data's preprocessing",
                    )
                observers[name].observe(value)
            if done == 0 and static_batch is None:  # size later batches from what one sample's activations weigh
                per_sample = sum(o.nbytes for o in outputs) / len(xb)
                batch_size = int(max(1, min(64, _BATCH_BYTES // max(per_sample, 1))))
            done += len(xb)
            task.advance(len(xb))
    tensors = {}
    for name, obs in observers.items():
        stats = obs.stats
        tensors[name] = TensorRange(amax=float(obs.amax()), min=stats.min, max=stats.max)
    return ActivationRanges(
        tensors=tensors,
        method=method,
        num_samples=len(subset),
        model_sha256=sha256_file(onnx_path),
        data_sha256=subset.sha256(),
        percentile=percentile if method == "percentile" else None,
    )
