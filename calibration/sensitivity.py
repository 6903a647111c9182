"""Mixed precision by measured sensitivity, and the INT8-or-float decision by measured latency.

`node_sensitivities` (used by calibration/guard.py) ranks every quantized node by how far
the outputs move with only it quantized, on any model (no labels needed): the class
probability mass that moves on a classifier, the output SNR otherwise. The older
`select_float_layers` below ranks weighted layers by accuracy on labelled data.

Sensitivity of a layer = how far the model's outputs move when ONLY that layer is
quantized (everything else float), measured in ONNX Runtime on eval data. Quantizing
one layer at a time isolates its own error; ranking by the continuous output error
(not accuracy, which is too coarse on small eval sets) orders the layers. Then, with
`max_accuracy_drop`, the most sensitive layers are left in float one by one until the
INT8 model is within that many points of the float model.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hadmc_deploy.calibration.qdq import WEIGHTED_OPS, write_qdq
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.calibration.verify_qdq import ort_session, run_batches
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import UsageError
from hadmc_deploy.evaluate import top1_accuracy
from hadmc_deploy.ui import UI, quiet_ui


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    output_err: float  # mean |logits - float logits| with only this layer quantized
    accuracy_drop: float  # points, same setting


@dataclass
class MixedPrecisionResult:
    float_accuracy: float
    int8_accuracy: float  # every layer quantized
    final_accuracy: float  # with `float_nodes` left in float
    max_accuracy_drop: float
    float_nodes: list[str]
    reasons: dict[str, str]
    sensitivities: list[LayerSensitivity] = field(default_factory=list)
    met: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_nodes(onnx_path: str | Path) -> list[tuple[str, str]]:
    """(name, op type) of the weighted layers INT8 quantizes, in graph order."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return [(n.name, n.op_type) for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def quantized_nodes(float_onnx: str | Path, qdq_onnx: str | Path) -> list[str]:
    """Nodes of the float graph that run quantized in `qdq_onnx` (a DequantizeLinear feeds them), in graph order.

    Why from the written graph: which ops ORT quantizes depends on the placement and on
    ORT's own rules (HardSwish, Mul, pools, Add ...), not only on the weighted layers.
    """
    qmodel = onnx.load(str(qdq_onnx), load_external_data=False)
    dq_outputs = {o for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = {n.name for n in qmodel.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq_outputs for i in n.input)}
    model = onnx.load(str(float_onnx), load_external_data=False)
    return [n.name for n in model.graph.node if n.name in fed]


@dataclass(frozen=True)
class NodeSensitivity:
    node: str
    op_type: str
    snr_db: float  # of the model's outputs with only this node quantized (lower = more sensitive)
    #: class probability mass that moves with only this node quantized (mean total variation
    #: between the softmaxes, the worst classifier output's; higher = more sensitive); None
    #: without a classifier output
    probability_shift: float | None = None

    def describe(self) -> str:
        shift = f"{self.probability_shift:.2%} of the class probability moves, " if self.probability_shift is not None else ""
        return f"{shift}output SNR {self.snr_db:.1f} dB with only it quantized"


def probability_shift(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float | None:
    """The worst classifier output's mean total variation between the two models' class
    probabilities: the share of probability that moved, which bounds how far the expected top-1
    accuracy can move. None when no output is a classifier's (`verify_qdq.class_probabilities`).

    Why not SNR for classifiers: SNR weighs every logit alike, and a top-1 flip happens where the
    leading logits are close. On a RegNetX on digits the final Gemm ranked 5th of 59 by SNR in its
    unlabelled build and outside the 8 the guard floats in its labelled build; by this measure it
    ranked first in both builds (and on 32 test images and 32 held-out training images alike,
    scratch /tmp/exp18/sens.py), and it was the one layer whose float restored INT8's accuracy."""
    from hadmc_deploy.calibration.verify_qdq import class_probabilities, is_classifier

    shifts = []
    for ref, cand in zip(reference, candidate, strict=True):
        if not is_classifier(ref):
            continue
        p, q = class_probabilities(ref), class_probabilities(cand)
        if p is not None and q is not None:
            shifts.append(float(0.5 * np.abs(p - q).sum(axis=1).mean()))
    return max(shifts) if shifts else None


def node_sensitivities(
    float_onnx: str | Path, ranges: ActivationRanges, x: np.ndarray, nodes: list[str], *, qdq_kwargs: dict, keep_float: list[str] | tuple[str, ...] = (), ui: UI | None = None
) -> list[NodeSensitivity]:
    """Each of `nodes` quantized alone (all others float); most sensitive first: the largest
    `probability_shift` on a classifier, else the lowest output SNR."""
    from hadmc_deploy.calibration.verify_qdq import compare_outputs, run_all_outputs

    ui = ui or quiet_ui()
    model = onnx.load(str(float_onnx), load_external_data=False)
    op_of = {n.name: n.op_type for n in model.graph.node}
    reference = run_all_outputs(ort_session(float_onnx), x)
    result = []
    with tempfile.TemporaryDirectory(prefix="hadmc-sens-") as tmp, ui.progress("node sensitivity", len(nodes)) as task:
        for name in nodes:
            path = write_qdq(float_onnx, ranges, Path(tmp) / "one.onnx", float_nodes=[*keep_float, *(n for n in nodes if n != name)], **qdq_kwargs)
            outputs = run_all_outputs(ort_session(path), x)
            result.append(NodeSensitivity(name, op_of.get(name, "?"), compare_outputs(reference, outputs).snr_db, probability_shift(reference, outputs)))
            task.advance()
    if result and all(s.probability_shift is not None for s in result):
        return sorted(result, key=lambda s: (-s.probability_shift, s.snr_db))
    return sorted(result, key=lambda s: s.snr_db)


def _evaluate(onnx_path: Path, data: ArrayDataset) -> np.ndarray:
    return run_batches(ort_session(onnx_path), data.x, batch_size=128)


def _accuracy(logits: np.ndarray, data: ArrayDataset) -> float:
    return top1_accuracy(logits, data.y)


def layer_sensitivities(
    float_onnx: str | Path, ranges: ActivationRanges, data: ArrayDataset, *, form: str = "qdq_u8s8", placement: str | None = None, ui: UI | None = None
) -> list[LayerSensitivity]:
    """Each weighted layer quantized alone; most sensitive first."""
    ui = ui or quiet_ui()
    layers = quantizable_nodes(float_onnx)
    names = [name for name, _ in layers]
    reference = _evaluate(Path(float_onnx), data)
    ref_acc = _accuracy(reference, data)
    result = []
    with tempfile.TemporaryDirectory(prefix="hadmc-sens-") as tmp, ui.progress("layer sensitivity", len(layers)) as task:
        for name, op_type in layers:
            path = write_qdq(float_onnx, ranges, Path(tmp) / "one.onnx", form=form, placement=placement, float_nodes=[n for n in names if n != name])
            logits = _evaluate(path, data)
            result.append(LayerSensitivity(name, op_type, float(np.abs(logits - reference).mean()), ref_acc - _accuracy(logits, data)))
            task.advance()
    return sorted(result, key=lambda s: s.output_err, reverse=True)


def select_float_layers(
    float_onnx: str | Path,
    ranges: ActivationRanges,
    eval_data: ArrayDataset,
    *,
    max_accuracy_drop: float = 1.0,
    form: str = "qdq_u8s8",
    placement: str | None = None,
    ui: UI | None = None,
) -> MixedPrecisionResult:
    """Leave the most sensitive layers in float until INT8 is within `max_accuracy_drop` points of float."""
    ui = ui or quiet_ui()
    if max_accuracy_drop < 0:
        raise UsageError(f"--max-accuracy-drop must be >= 0, got {max_accuracy_drop}")
    if len(eval_data) == 0:
        raise UsageError("mixed precision needs labelled eval data", hint="pass --eval DATA")
    float_acc = _accuracy(_evaluate(Path(float_onnx), eval_data), eval_data)
    with tempfile.TemporaryDirectory(prefix="hadmc-mixed-") as tmp:
        def accuracy_with(float_nodes: list[str]) -> float:
            path = write_qdq(float_onnx, ranges, Path(tmp) / "mixed.onnx", form=form, placement=placement, float_nodes=float_nodes)
            return _accuracy(_evaluate(path, eval_data), eval_data)

        int8_acc = accuracy_with([])
        result = MixedPrecisionResult(float_acc, int8_acc, int8_acc, max_accuracy_drop, [], {})
        if float_acc - int8_acc <= max_accuracy_drop:
            ui.log(f"INT8 everywhere: {int8_acc:.2f}% vs float {float_acc:.2f}% (within {max_accuracy_drop} points)")
            return result
        result.sensitivities = layer_sensitivities(float_onnx, ranges, eval_data, form=form, placement=placement, ui=ui)
        accuracy = int8_acc
        for rank, sens in enumerate(result.sensitivities, start=1):
            result.float_nodes.append(sens.node)
            before, accuracy = accuracy, accuracy_with(result.float_nodes)
            result.reasons[sens.node] = (
                f"sensitivity rank {rank}/{len(result.sensitivities)} (output error {sens.output_err:.4g}, "
                f"{sens.accuracy_drop:+.2f} points alone); accuracy {before:.2f}% -> {accuracy:.2f}% with it in float"
            )
            ui.log(f"keep {sens.node} in float: {result.reasons[sens.node]}")
            if float_acc - accuracy <= max_accuracy_drop:
                break
        result.final_accuracy = accuracy
        result.met = float_acc - accuracy <= max_accuracy_drop
        if not result.met:
            ui.warn(f"even with every layer in float INT8 is {float_acc - accuracy:.2f} points below float")
    return result


@dataclass(frozen=True)
class PrecisionDecision:
    precision: str  # "int8" or "fp32"
    speedup: float  # float_ms / int8_ms
    note: str


def choose_precision_by_latency(int8_ms: float, float_ms: float, *, min_speedup: float = 1.0) -> PrecisionDecision:
    """INT8 only if it is measurably faster than float on the target (latencies measured side by side)."""
    if int8_ms <= 0 or float_ms <= 0:
        raise UsageError(f"latencies must be positive (int8 {int8_ms} ms, float {float_ms} ms)")
    speedup = float_ms / int8_ms
    if speedup > min_speedup:
        return PrecisionDecision("int8", speedup, f"INT8 runs {speedup:.2f}x faster than float ({int8_ms:.3f} vs {float_ms:.3f} ms)")
    return PrecisionDecision(
        "fp32",
        speedup,
        f"INT8 is not faster than float on this target ({int8_ms:.3f} vs {float_ms:.3f} ms, {speedup:.2f}x); falling back to float",
    )
