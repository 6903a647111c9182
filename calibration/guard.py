"""The accuracy guard: an INT8 graph within the allowed drop of float, repaired before it is refused.

Criterion. With labelled eval data: top-1 accuracy of INT8 within `max_accuracy_drop`
points of float, measured on (a fixed subset of) that data. Without: INT8 against
FP32 on calibration samples held out from the ranges, every output checked: on classifier
outputs the same guard in points, the top-1 accuracy INT8 is expected to lose with FP32's
own probabilities as labels (so flips between classes FP32 itself cannot tell apart cost
little), passed only when the held-out samples vouch for a loss below `max_accuracy_drop`
(one-sided 95%: 299 samples at least for 1 point); SNR on all outputs, so detectors and
multi-head models are covered; see verify_qdq.judge. A bar on agreement alone (90% plain or
97% weighted) let a RegNetX INT8 graph through that lost 2.8 points on the test set.

Repair, each step re-measured and logged:
1. ranges per tensor: fresh "auto" ranges (entropy / percentile / minmax, whichever
   quantizes the tensor closest to float on held-out samples) compete per tensor with
   the given ranges; the winner of each tensor is kept;
2. the most sensitive quantized nodes go back to float one at a time (sensitivity = how far
   the outputs move with only that node quantized: class probability on a classifier, else SNR) until the criterion holds or
   `max_float_nodes` is reached; once it holds, those floated before the last go back to
   INT8 one at a time where it still holds (the ranking is a cheap proxy).
The outcome says whether the guard holds and why not; the caller decides (deploy
float, or fail) - nothing here ships a graph that broke the guard as if it held.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hadmc_deploy.calibration.collect import collect_ranges, merge_by_heldout_error
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.calibration.sensitivity import node_sensitivities, quantized_nodes
from hadmc_deploy.calibration.verify_qdq import QdqCheck, compare_outputs, judge, ort_session, run_all_outputs
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.evaluate import top1_accuracy
from hadmc_deploy.fileio import atomic_path
from hadmc_deploy.ui import UI, quiet_ui
from hadmc_deploy.vouch import count_bound, images_to_vouch


@dataclass(frozen=True)
class GuardSettings:
    max_accuracy_drop: float = 1.0  # points: measured with eval data, vouched for by held-out samples without
    min_snr_db: float = 10.0  # without eval data (every output)
    repair: bool = True
    max_float_nodes: int = 8  # nodes step 2 may return to float before giving up
    eval_samples: int = 1000  # eval subset the search measures on (all of it when smaller)


@dataclass(frozen=True)
class GuardStep:
    action: str
    float_nodes: tuple[str, ...]
    accuracy: float | None  # percent on the eval subset; None without eval data
    top1_agreement: float | None
    snr_db: float
    holds: bool
    confidence_agreement: float | None = None  # top-1 agreement weighted by FP32's confidence (verify_qdq)
    expected_loss: float | None = None  # top-1 accuracy INT8 is expected to lose, a fraction (verify_qdq.expected_loss)
    loss_bound: float | None = None  # its one-sided 95% upper bound on the held-out samples


@dataclass
class GuardOutcome:
    mode: str  # "accuracy" (labelled eval data) or "agreement" (held-out calibration samples)
    holds: bool
    reason: str  # one line: why it holds, or why this INT8 graph must not be deployed
    float_accuracy: float | None
    int8_accuracy: float | None
    max_accuracy_drop: float
    float_nodes: list[str] = field(default_factory=list)
    float_node_reasons: dict[str, str] = field(default_factory=dict)
    steps: list[GuardStep] = field(default_factory=list)
    check: QdqCheck | None = None  # the final graph against float on held-out calibration samples


@dataclass
class _Graph:
    ranges: ActivationRanges
    float_nodes: list[str]
    accuracy: float | None
    check: QdqCheck
    holds: bool
    path: Path  # the QDQ file measured (copied to the output when chosen: writing it again took 1-2 s)


class _Measure:
    """Writes a candidate QDQ graph and measures it against float (accuracy or agreement)."""

    def __init__(self, float_onnx: Path, heldout_x: np.ndarray, eval_data: ArrayDataset | None, settings: GuardSettings, qdq_kwargs: dict, tmp: Path,
                 reference: list[np.ndarray] | None = None) -> None:
        self.float_onnx, self.heldout_x, self.eval_data, self.settings, self.qdq_kwargs, self.tmp = float_onnx, heldout_x, eval_data, settings, qdq_kwargs, tmp
        float_session = ort_session(float_onnx)
        self.names = [o.name for o in float_session.get_outputs()]
        self.ref_heldout = reference if reference is not None else run_all_outputs(float_session, heldout_x)
        self.ref_eval = run_all_outputs(float_session, eval_data.x)[0] if eval_data is not None else None
        self.float_accuracy = top1_accuracy(self.ref_eval, eval_data.y) if eval_data is not None else None
        self.count = 0

    def write(self, ranges: ActivationRanges, float_nodes: list[str], path: Path | None = None) -> Path:
        self.count += 1
        return write_qdq(self.float_onnx, ranges, path or self.tmp / f"candidate{self.count}.onnx", float_nodes=float_nodes, **self.qdq_kwargs)

    def __call__(self, ranges: ActivationRanges, float_nodes: list[str]) -> _Graph:
        path = self.write(ranges, float_nodes)
        session = ort_session(path)
        check = judge(
            compare_outputs(self.ref_heldout, run_all_outputs(session, self.heldout_x), self.names),
            min_snr_db=self.settings.min_snr_db,
            max_loss=self.settings.max_accuracy_drop / 100.0 if self.eval_data is None else None,
        )
        accuracy = None
        if self.eval_data is not None:
            accuracy = top1_accuracy(run_all_outputs(session, self.eval_data.x)[0], self.eval_data.y)
            holds = self.float_accuracy - accuracy <= self.settings.max_accuracy_drop
        else:
            holds = check.passed
        return _Graph(ranges, list(float_nodes), accuracy, check, holds, path)


#: samples the sensitivity ranking runs each one-node-quantized graph on. It only orders the nodes
#: (the guard then re-measures each step on all its samples); over up to 2,000 eval samples it ran
#: one full pass per quantized node: 81 s of a ResNet-18 build at 224 with 43 nodes; 64 samples
#: still spent 13 s of 24 running graphs. 32 images give each SNR tens of thousands of outputs.
SENSITIVITY_SAMPLES = 32


def guard_int8(
    float_onnx: str | Path,
    ranges: ActivationRanges,
    calib: ArrayDataset,
    heldout_x: np.ndarray,
    out_path: str | Path,
    *,
    eval_data: ArrayDataset | None = None,
    settings: GuardSettings = GuardSettings(),
    form: str = "qdq_u8s8",
    placement: str | None = None,
    per_channel: bool = True,
    reduce_range: bool = False,
    float_nodes: list[str] | tuple[str, ...] = (),
    num_samples: int = 512,
    percentile: float = 99.99,
    reference: list[np.ndarray] | None = None,
    ui: UI | None = None,
) -> tuple[GuardOutcome, ActivationRanges]:
    """Write to `out_path` the best INT8 graph the guard found; return the outcome and the ranges it
    used. `reference`: the float model's outputs on `heldout_x` when the caller has them already."""
    ui = ui or quiet_ui()
    float_onnx = Path(float_onnx)
    evald = eval_data.subset(settings.eval_samples) if eval_data is not None else None
    qdq_kwargs = {"form": form, "placement": placement, "per_channel": per_channel, "reduce_range": reduce_range}
    with tempfile.TemporaryDirectory(prefix="hadmc-guard-") as tmp:
        measure = _Measure(float_onnx, heldout_x, evald, settings, qdq_kwargs, Path(tmp), reference)
        mode = "accuracy" if evald is not None else "agreement"
        outcome = GuardOutcome(mode, False, "", measure.float_accuracy, None, settings.max_accuracy_drop)
        best = measure(ranges, list(float_nodes))
        outcome.steps.append(_step(f"INT8 with {ranges.method} ranges", best))
        ui.log(_describe(outcome.steps[-1], measure.float_accuracy))
        repair = settings.repair and not (best.holds or _too_few_to_vouch(best, len(heldout_x), settings))
        if repair and not (ranges.method == "auto" and ranges.form == form):
            auto = collect_ranges(float_onnx, calib, method="auto", num_samples=num_samples, percentile=percentile, form=form, ui=ui)
            merged = merge_by_heldout_error(float_onnx, calib, {ranges.method: ranges, "auto": auto}, heldout_x, form, ui)
            mixed = ActivationRanges(merged, "auto", auto.num_samples, auto.model_sha256, auto.data_sha256, percentile, form)
            candidate = measure(mixed, best.float_nodes)
            outcome.steps.append(_step("ranges chosen per tensor (held-out quantization error)", candidate))
            ui.log(_describe(outcome.steps[-1], measure.float_accuracy))
            if _better(candidate, best):
                best = candidate
        if not best.holds and repair and settings.max_float_nodes > 0:
            best = _float_back(measure, best, outcome, settings, ui)
        outcome.holds = best.holds
        outcome.float_nodes = best.float_nodes
        outcome.int8_accuracy = best.accuracy
        outcome.check = best.check
        outcome.reason = _reason(outcome, best, settings, len(heldout_x))
        with atomic_path(out_path) as tmp_out:
            shutil.copyfile(best.path, tmp_out)
    return outcome, best.ranges


def _too_few_to_vouch(graph: _Graph, samples: int, settings: GuardSettings) -> bool:
    """Without labels, whether `samples` held-out samples could not vouch for the guard even if
    every one agreed: no repair can then help, and each step would cost a pass over them."""
    return graph.accuracy is None and graph.check.loss_bound is not None and count_bound(0, samples) > settings.max_accuracy_drop / 100.0 + 1e-12


def _float_back(measure: _Measure, best: _Graph, outcome: GuardOutcome, settings: GuardSettings, ui: UI) -> _Graph:
    """Step 2: the most sensitive quantized nodes back to float, one at a time, re-measured after each."""
    candidates = [n for n in quantized_nodes(measure.float_onnx, best.path) if n not in best.float_nodes]
    x = (measure.eval_data.x if measure.eval_data is not None else measure.heldout_x)[:SENSITIVITY_SAMPLES]
    ranked = node_sensitivities(measure.float_onnx, best.ranges, x, candidates, qdq_kwargs=measure.qdq_kwargs, keep_float=best.float_nodes, ui=ui)
    current = best
    for rank, sens in enumerate(ranked[: settings.max_float_nodes], start=1):
        candidate = measure(current.ranges, [*current.float_nodes, sens.node])
        step = _step(f"keep {sens.node} ({sens.op_type}) in float", candidate)
        outcome.steps.append(step)
        outcome.float_node_reasons[sens.node] = f"sensitivity rank {rank}/{len(ranked)}: {sens.describe()}"
        ui.log(_describe(step, measure.float_accuracy))
        current = candidate
        if current.holds:
            break
    if current.holds:
        current = _quantize_again(measure, current, [n for n in current.float_nodes if n not in best.float_nodes][:-1], outcome, ui)
    return current if _better(current, best) or current.holds else best


def _quantize_again(measure: _Measure, current: _Graph, tried: list[str], outcome: GuardOutcome, ui: UI) -> _Graph:
    """Once the guard holds, the layers floated on the way there go back to INT8 one at a time,
    the least sensitive first, wherever it still holds: the ranking is a proxy measured on a few
    samples, and it can miss the layer that matters. A RegNetX on digits held only once its final
    Gemm (then ranked fifth, by output SNR) was in float; the four layers before it had not helped
    and would have run in float for nothing."""
    for node in reversed(tried):
        candidate = measure(current.ranges, [n for n in current.float_nodes if n != node])
        step = _step(f"quantize {node} again", candidate)
        outcome.steps.append(step)
        ui.log(_describe(step, measure.float_accuracy))
        if candidate.holds:
            current = candidate
            outcome.float_node_reasons.pop(node, None)
    return current


def _better(a: _Graph, b: _Graph) -> bool:
    if a.holds != b.holds:
        return a.holds
    if a.accuracy is not None and b.accuracy is not None and a.accuracy != b.accuracy:
        return a.accuracy > b.accuracy
    if a.accuracy is None and a.check.expected_loss is not None and b.check.expected_loss is not None and a.check.expected_loss != b.check.expected_loss:
        return a.check.expected_loss < b.check.expected_loss  # without labels: the smaller loss FP32's probabilities expect
    return a.check.snr_db > b.check.snr_db


def _step(action: str, graph: _Graph) -> GuardStep:
    c = graph.check
    return GuardStep(action, tuple(graph.float_nodes), graph.accuracy, c.top1_agreement, c.snr_db, graph.holds, c.confidence_agreement, c.expected_loss, c.loss_bound)


def _describe(step: GuardStep, float_accuracy: float | None) -> str:
    acc = f"accuracy {step.accuracy:.2f}% (float {float_accuracy:.2f}%), " if step.accuracy is not None else ""
    agree = f"top-1 agreement {step.top1_agreement:.1%}, " if step.top1_agreement is not None else ""
    if step.loss_bound is not None and step.accuracy is None:
        agree += f"expected loss {100 * step.expected_loss:.2f} points (below {100 * step.loss_bound:.2f} at 95%), "
    return f"guard: {step.action}: {acc}{agree}SNR {step.snr_db:.1f} dB -> {'holds' if step.holds else 'fails'}"


def _reason(outcome: GuardOutcome, best: _Graph, settings: GuardSettings, heldout: int) -> str:
    repaired = f" after {len(outcome.steps) - 1} repair step(s)" if len(outcome.steps) > 1 else ""
    if outcome.mode == "accuracy":
        drop = outcome.float_accuracy - best.accuracy
        verdict = "within" if best.holds else "outside"
        return f"INT8 {best.accuracy:.2f}% vs float {outcome.float_accuracy:.2f}% ({drop:+.2f} points drop), {verdict} the {settings.max_accuracy_drop} point guard{repaired}"
    if not best.holds and _too_few_to_vouch(best, heldout, settings):
        needed = images_to_vouch(settings.max_accuracy_drop / 100.0)
        return (f"INT8 is not shown to agree with FP32: {heldout} held-out calibration samples cannot vouch for a loss below "
                f"{settings.max_accuracy_drop:g} point even if all agree ({needed} at least; {best.check.reason}); refusing to deploy it")
    if best.holds:
        loss = "" if best.check.loss_bound is None else (
            f": expected top-1 loss {100 * best.check.expected_loss:.2f} points, below {100 * best.check.loss_bound:.2f} at 95%")
        return f"INT8 agrees with FP32 on {heldout} held-out calibration samples{loss}{repaired}"
    return f"INT8 disagrees with FP32 on {heldout} held-out calibration samples ({best.check.reason}){repaired}; refusing to deploy it"
