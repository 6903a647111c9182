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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hadmc_deploy.calibration.observers import DEFAULT_PERCENTILE, HistogramObserver, make_observer
from hadmc_deploy.calibration.ranges import ActivationRanges, TensorRange
from hadmc_deploy.calibration.samples import MIN_CALIBRATION_SAMPLES, check_calib_samples, check_calib_set
from hadmc_deploy.calibration.select import CANDIDATE_METHODS, HeldOutError
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import DataError
from hadmc_deploy.fileio import sha256_file
from hadmc_deploy.ui import UI, quiet_ui

#: "auto" chooses per tensor among the other three (see collect_ranges); the default by
#: measurement in docs/int8.md.
METHODS = ("entropy", "minmax", "percentile", "auto")
DEFAULT_METHOD = "auto"
_BATCH_BYTES = 256 << 20  # activations of one calibration batch, all tensors together


def calibration_subset(data: ArrayDataset, num_samples: int) -> ArrayDataset:
    """The samples calibration uses: a fixed, seeded subset of `num_samples` (all when fewer)."""
    check_calib_samples(num_samples)
    check_calib_set(data.source, len(data))
    return data.subset(num_samples)


def float_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Graph inputs and node outputs of float type, in graph order (constants excluded). Types from
    the model's own value_info where it has every output's (our exports do: shape inference is part
    of the export), else from shape inference (1.1 s of a ResNet-18 build's dozen quantizations)."""
    outputs = [out for node in model.graph.node for out in node.output if out]
    known = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    if not all(known.get(out) for out in outputs):
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types = known
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


class _AugmentedModel:
    """The float model with every float tensor as an output, in one ORT session (no graph rewrites)."""

    def __init__(self, onnx_path: str | Path, data: ArrayDataset) -> None:
        import onnxruntime as ort

        model = onnx.load(str(onnx_path))
        self.input_name = check_input_shape(model, data)
        self.names = float_tensor_names(model)
        existing = {o.name for o in model.graph.output}
        for name in self.names:
            if name not in existing:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        # No graph rewrites: every tensor must be computed exactly as the float model defines it.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory(prefix="hadmc-calib-") as tmp:
            augmented = Path(tmp) / "augmented.onnx"
            onnx.save(model, str(augmented))
            self.session = ort.InferenceSession(str(augmented), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        # A model exported with a fixed batch takes only batches of exactly that size.
        static = self.session.get_inputs()[0].shape[0]
        self.static_batch = static if isinstance(static, int) and static > 0 else None

    def usable(self, n: int) -> int:
        """How many of n samples can run (a fixed batch drops the remainder)."""
        if self.static_batch is None:
            return n
        if n < self.static_batch:
            raise DataError(f"the model takes a fixed batch of {self.static_batch}, more than the {n} calibration samples", hint=f"pass at least {self.static_batch} samples")
        return n - n % self.static_batch

    def tensors(self, x: np.ndarray, task: Any = None) -> Iterator[dict[str, np.ndarray]]:
        """Per batch of `x`: tensor name -> value; the first NaN/Inf tensor (graph order) raises, named."""
        limit, done = self.usable(len(x)), 0
        batch_size = self.static_batch or 1
        while done < limit:
            xb = x[done : done + batch_size]
            outputs = self.session.run(self.output_names, {self.input_name: xb})
            by_name = dict(zip(self.output_names, outputs, strict=True))
            for name in self.names:
                value = by_name[name]
                if not np.isfinite(value).all():
                    bad = int(np.argwhere(~np.isfinite(value).reshape(len(xb), -1).all(axis=1))[0, 0]) + done
                    raise DataError(f"tensor {name!r} holds NaN/Inf on calibration sample {bad}", hint="check the model weights and the data's preprocessing")
            yield {name: by_name[name] for name in self.names}
            if done == 0 and self.static_batch is None:  # size later batches from what one sample's activations weigh
                per_sample = sum(o.nbytes for o in outputs) / len(xb)
                batch_size = int(max(1, min(64, _BATCH_BYTES // max(per_sample, 1))))
            done += len(xb)
            if task is not None:
                task.advance(len(xb))


def heldout_split(n: int) -> int:
    """How many of n calibration samples "auto" holds out to choose among the methods (0: too few to split)."""
    return n // 4 if n >= 4 * MIN_CALIBRATION_SAMPLES else 0


def collect_ranges(
    onnx_path: str | Path,
    data: ArrayDataset,
    method: str = DEFAULT_METHOD,
    num_samples: int = 512,
    percentile: float = DEFAULT_PERCENTILE,
    form: str = "qdq_u8s8",
    ui: UI | None = None,
) -> ActivationRanges:
    """Run `num_samples` calibration samples through the model and return each float tensor's range.

    method "auto": histograms on 3/4 of the samples give each tensor an entropy, a
    percentile and a minmax range; the held-out quarter picks, per tensor, the one whose
    quantize-dequantize in `form` is closest to the float tensor (calibration/select.py).
    """
    ui = ui or quiet_ui()
    if method not in METHODS:
        raise DataError(f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}")
    subset = calibration_subset(data, num_samples)
    if len(subset) < num_samples:
        ui.warn(f"calibration data has {len(subset)} samples, fewer than the {num_samples} asked for; using all of them")
    model = _AugmentedModel(onnx_path, subset)
    held = heldout_split(len(subset)) if method == "auto" else 0
    fit_x, held_x = subset.x[: len(subset) - held], subset.x[len(subset) - held :]
    observers = {name: HistogramObserver() if method == "auto" else make_observer(method, percentile) for name in model.names}
    with ui.progress(f"calibrate ({method})", model.usable(len(fit_x))) as task:
        for values in model.tensors(fit_x, task):
            for name, value in values.items():
                observers[name].observe(value)
    if method == "auto":
        tensors = _choose_per_tensor(model, observers, held_x if held else fit_x, percentile, form, ui)
    else:
        tensors = {name: TensorRange(amax=float(obs.amax()), min=obs.stats.min, max=obs.stats.max) for name, obs in observers.items()}
    return ActivationRanges(
        tensors=tensors,
        method=method,
        num_samples=len(subset),
        model_sha256=sha256_file(onnx_path),
        data_sha256=subset.sha256(),
        percentile=percentile if method in ("percentile", "auto") else None,
        form=form if method == "auto" else None,
    )


def _choose_per_tensor(model: _AugmentedModel, observers: dict, x: np.ndarray, percentile: float, form: str, ui: UI) -> dict[str, TensorRange]:
    candidates = {
        name: {m: TensorRange(amax, obs.stats.min, obs.stats.max) for m, amax in sorted(obs.amax_by_method(percentile).items(), key=lambda kv: CANDIDATE_METHODS.index(kv[0]))}
        for name, obs in observers.items()
    }
    return choose_by_heldout_error(model, candidates, x, form, ui)


def choose_by_heldout_error(model: _AugmentedModel, candidates: dict[str, dict[str, TensorRange]], x: np.ndarray, form: str, ui: UI) -> dict[str, TensorRange]:
    """Per tensor, the candidate range whose quantize-dequantize in `form` is closest to float on `x`."""
    scorer = HeldOutError(candidates, symmetric=form == "qdq_s8s8")
    with ui.progress("choose ranges per tensor", model.usable(len(x))) as task:
        for values in model.tensors(x, task):
            for name, value in values.items():
                scorer.observe(name, value)
    return scorer.best()


def merge_by_heldout_error(
    onnx_path: str | Path, data: ArrayDataset, candidates: dict[str, ActivationRanges], x: np.ndarray, form: str, ui: UI | None = None
) -> dict[str, TensorRange]:
    """Per tensor, the best of several complete range sets (e.g. a given set and freshly chosen "auto" ranges)."""
    model = _AugmentedModel(onnx_path, data)
    per_tensor = {name: {label: ranges.tensors[name] for label, ranges in candidates.items() if name in ranges} for name in model.names}
    return choose_by_heldout_error(model, per_tensor, x, form, ui or quiet_ui())


def load_or_collect(
    onnx_path: str | Path,
    data: ArrayDataset,
    method: str = "auto",
    cache_path: str | Path | None = None,
    *,
    num_samples: int = 512,
    percentile: float = 99.99,
    form: str = "qdq_u8s8",
    ui: UI | None = None,
) -> tuple[ActivationRanges, bool]:
    """Ranges for (model, data, method): from `cache_path` when its hashes match, else collected and saved.

    Returns (ranges, reused). A stale or corrupt cache is recomputed and overwritten,
    never trusted.
    """
    subset = calibration_subset(data, num_samples)
    model_sha = sha256_file(onnx_path)
    data_sha = subset.sha256()
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cached = ActivationRanges.load(cache_path)
        except DataError:
            cached = None
        if cached is not None and cached.matches(model_sha, data_sha, method, len(subset), percentile, form):
            return cached, True
    ranges = collect_ranges(onnx_path, data, method=method, num_samples=num_samples, percentile=percentile, form=form, ui=ui)
    if cache_path is not None:
        ranges.save(cache_path)
    return ranges, False
