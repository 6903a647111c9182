"""Check a quantized graph against its float source in ONNX Runtime, on real inputs.

Every QDQ graph we write is run here before anyone trusts it: it must load and run
in ORT, and agree with the float model closely enough (top-1 agreement, error
relative to the float outputs' scale). Failing that is a VerificationError.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hadmc_deploy.errors import VerificationError

DEFAULT_MIN_TOP1_AGREEMENT = 0.90
DEFAULT_MAX_REL_ERR = 0.25  # max |int8 - float| over max |float|


@dataclass(frozen=True)
class QdqCheck:
    samples: int
    top1_agreement: float
    max_abs_err: float
    mean_abs_err: float
    rel_err: float  # max_abs_err / max |float output|

    def to_dict(self) -> dict:
        return asdict(self)


def ort_session(onnx_path: str | Path, threads: int | None = None):  # noqa: ANN201 - onnxruntime imported lazily
    """A CPU session with full graph optimization (what deployment runs, so QDQ fuses)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_batches(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:  # noqa: ANN001
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> QdqCheck:
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.abs(reference).max()) or 1.0
    agree = float((reference.reshape(len(reference), -1).argmax(1) == candidate.reshape(len(candidate), -1).argmax(1)).mean())
    return QdqCheck(len(reference), agree, float(diff.max()), float(diff.mean()), float(diff.max()) / scale)


def verify_qdq(
    float_onnx: str | Path,
    qdq_onnx: str | Path,
    x: np.ndarray,
    *,
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT,
    max_rel_err: float = DEFAULT_MAX_REL_ERR,
    raise_on_failure: bool = True,
) -> QdqCheck:
    """Run both graphs on `x`; raise VerificationError (naming the worst numbers) if they disagree."""
    try:
        quantized = run_batches(ort_session(qdq_onnx), x)
    except Exception as exc:  # an ORT failure is a broken graph, whatever its class
        raise VerificationError(f"quantized model {Path(qdq_onnx).name} does not run in ONNX Runtime: {exc}") from exc
    check = compare_outputs(run_batches(ort_session(float_onnx), x), quantized)
    if raise_on_failure and (check.top1_agreement < min_top1_agreement or check.rel_err > max_rel_err):
        raise VerificationError(
            f"{Path(qdq_onnx).name} disagrees with the float model: top-1 agreement {check.top1_agreement:.1%} "
            f"(need {min_top1_agreement:.0%}), max error {check.max_abs_err:.4g} = {check.rel_err:.1%} of the output range "
            f"(allowed {max_rel_err:.0%})",
            hint="try --calib-method percentile or leave sensitive layers in float (--max-accuracy-drop)",
        )
    return check
