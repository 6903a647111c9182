"""Numerical verification: does an ONNX graph in ONNX Runtime compute what the PyTorch model computes?

Every export and every graph rewrite ends here (onnx-simplifier's rule). The worst
element decides: a failure names it, with both values and the error, so a user can
see whether it is a rounding detail or a broken graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hadmc_deploy.errors import DataError, ExportError, VerificationError
from hadmc_deploy.ui import UI, quiet_ui

INPUT_NAME = "input"
VERIFY_CHUNK = 16
RANDOM_VERIFY_SAMPLES = 3  # odd, so a dynamic-batch graph is checked at a batch it was not traced at


@dataclass
class Verification:
    inputs: str  # "real" (given by the caller) or "random" (standard normal, seed 0)
    samples: int
    max_abs_err: float
    max_rel_err: float  # max |onnx - torch| / (|torch| + atol) over all output elements
    rtol: float
    atol: float
    passed: bool
    worst: dict[str, Any] = field(default_factory=dict)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flatten_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in flatten_outputs(item)]
    raise ExportError(f"the model returns {type(out).__name__}, not tensors", hint="export a model whose forward returns a tensor or a tuple of tensors")


def verify_inputs_for(verify_inputs: np.ndarray | None, input_shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    if verify_inputs is None:
        shape = (RANDOM_VERIFY_SAMPLES, *input_shape[1:])
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32), "random"
    x = np.asarray(verify_inputs)
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise DataError(f"verification inputs have shape {tuple(x.shape)} but the model takes {tuple(input_shape)}", hint="pass data of the model's input shape (or --resize/--channels)")
    if len(x) == 0:
        raise DataError("verification inputs are empty", hint="pass at least one sample")
    return np.ascontiguousarray(x, dtype=np.float32), "real"


def _chunks(x: np.ndarray, static_batch: int | None) -> list[tuple[np.ndarray, int]]:
    """(batch, number of real rows) pairs; a static graph gets exact batches, the last padded."""
    size = static_batch or VERIFY_CHUNK
    out = []
    for start in range(0, len(x), size):
        part = x[start : start + size]
        real = len(part)
        if static_batch and real < static_batch:
            part = np.concatenate([part, np.repeat(part[:1], static_batch - real, axis=0)])
        out.append((part, real))
    return out


def verify(model: nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray, inputs_kind: str, *, static_batch: int | None, rtol: float, atol: float, ui: UI) -> Verification:
    """Run ONNX Runtime and PyTorch on the same inputs; the worst element decides.

    An element fails when |onnx - torch| > atol * scale + rtol * |torch| (numpy.allclose
    with the absolute term scaled to the output), or when exactly one side is not finite.
    `scale` is max(1, the output's largest |torch| value): float32 sums whose terms reach
    1e2-1e3 (random-BN ResNet-50 logits, unnormalised scores) carry errors of ~1e-4 in
    every element, so a fixed atol fails their near-zero elements spuriously.
    """
    from hadmc_deploy.backends.ort_session import make_session

    session = make_session(onnx_model.SerializeToString())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    max_abs = max_rel = 0.0
    worst: dict[str, Any] = {}
    worst_excess = -np.inf
    for batch, real in ui.track(_chunks(x, static_batch), "verify in ONNX Runtime"):
        with torch.no_grad():
            ref = [t.detach().float().cpu().numpy()[:real] for t in flatten_outputs(model(torch.from_numpy(batch).to(device)))]
        got = [o[:real] for o in session.run(None, {INPUT_NAME: batch})]
        if len(got) != len(ref):
            raise VerificationError(f"ONNX graph has {len(got)} outputs but the model returns {len(ref)}")
        for k, (g, r) in enumerate(zip(got, ref, strict=True)):
            if g.shape != r.shape:
                raise VerificationError(f"ONNX output {k} has shape {g.shape} but PyTorch gives {r.shape}", hint="the export is wrong for this batch size; try --static-batch")
            g64, r64 = g.astype(np.float64), r.astype(np.float64)
            diff = np.abs(g64 - r64)
            bad_finite = np.isfinite(g64) != np.isfinite(r64)
            diff = np.where(bad_finite, np.inf, np.nan_to_num(diff, nan=0.0))
            finite_ref = np.abs(np.nan_to_num(r64, nan=0.0, posinf=0.0, neginf=0.0))
            scale = max(1.0, float(finite_ref.max())) if finite_ref.size else 1.0
            excess = diff - (atol * scale + rtol * finite_ref)
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / (np.abs(r64) + atol)).max()))
            idx = np.unravel_index(int(np.argmax(excess)), excess.shape)
            if excess[idx] > worst_excess:
                worst_excess = float(excess[idx])
                worst = {"output": k, "index": [int(i) for i in idx], "onnx": float(g64[idx]), "torch": float(r64[idx]), "abs_err": float(diff[idx])}
    return Verification(inputs_kind, len(x), max_abs, max_rel, rtol, atol, passed=worst_excess <= 0, worst=worst)


def raise_if_failed(v: Verification, simplifier: str) -> None:
    if v.passed:
        return
    w = v.worst
    hint = "rerun with --no-simplify to see whether simplification caused it" if simplifier != "none" else "try another --opset or the other exporter"
    raise VerificationError(
        f"ONNX Runtime disagrees with PyTorch: worst element output[{w['output']}]{w['index']} = {w['onnx']:.6g} vs torch {w['torch']:.6g} "
        f"(abs err {w['abs_err']:.3g} > atol {v.atol:g} + rtol {v.rtol:g}*|torch|; max abs err {v.max_abs_err:.3g}, "
        f"max rel err {v.max_rel_err:.3g} over {v.samples} {v.inputs} samples)",
        hint=hint,
    )


def verify_file(model: nn.Module, onnx_path: str | Path, verify_inputs: np.ndarray | None = None, *, rtol: float = 1e-3, atol: float = 1e-4, ui: UI | None = None) -> Verification:
    """Check an existing ONNX file against `model` (e.g. after an edit); raises VerificationError above tolerance."""
    return verify_graph(model, onnx.load(str(onnx_path)), verify_inputs, rtol=rtol, atol=atol, ui=ui)


def verify_graph(model: nn.Module, onnx_model: onnx.ModelProto, verify_inputs: np.ndarray | None = None, *, rtol: float = 1e-3, atol: float = 1e-4,
                 ui: UI | None = None, simplifier: str = "none") -> Verification:
    """`verify_file` on a loaded graph (its batch axis fixed or not, as the graph says); `simplifier`
    names what simplified it, for the hint of a failure."""
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    static = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    shape = tuple(d.dim_value or 1 for d in dims)
    x, kind = verify_inputs_for(verify_inputs, shape)
    was_training = model.training
    model.eval()
    try:
        result = verify(model, onnx_model, x, kind, static_batch=static, rtol=rtol, atol=atol, ui=ui or quiet_ui())
    finally:
        model.train(was_training)
    raise_if_failed(result, simplifier)
    return result
