"""The accuracy guard and the one INT8 call: broken ranges trip it, its repair restores accuracy, disagreement is refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from calibration_models import tiny_digits_onnx

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.guard import GuardSettings
from hadmc_deploy.calibration.quantize import Int8Options, quantize_int8
from hadmc_deploy.calibration.trt_cache import read_header
from hadmc_deploy.calibration.verify_qdq import compare_outputs, judge
from hadmc_deploy.errors import UsageError
from hadmc_deploy.evaluate import onnx_accuracy
from hadmc_deploy.ui import quiet_ui


def _broken_cache(path, train, out_dir, method="entropy"):
    """scales.json whose hashes match (so it is reused) but whose ranges are 100x too small."""
    good = collect_ranges(path, train, method=method, num_samples=256)
    good.scaled(0.01).save(out_dir / "scales.json")
    return good


def test_broken_ranges_trip_the_guard_and_the_repair_restores_accuracy(tmp_path):
    path, train, test = tiny_digits_onnx()
    _broken_cache(path, train, tmp_path)
    float_acc = onnx_accuracy(path, test)
    result = quantize_int8(path, train, tmp_path, Int8Options(method="entropy", samples=256, guard=GuardSettings(max_accuracy_drop=1.0)), eval_data=test)
    guard = result.guard
    assert result.ranges_reused and guard is not None and guard.mode == "accuracy"
    first = guard.steps[0]
    assert not first.holds and float_acc - first.accuracy > 20  # the sabotage really broke INT8, and the guard saw it
    assert guard.holds and result.deployable and len(guard.steps) >= 2
    assert "within the 1.0 point guard" in guard.reason
    # Measured independently on the graph it wrote, on all the eval data:
    assert float_acc - onnx_accuracy(result.qdq_path, test) <= 1.0
    assert result.method == "auto" and sum(result.method_counts.values()) == len(collect_ranges(path, train, "minmax", 256))
    assert read_header(result.trt_cache_path)[1] == "PerTensorCalibration"  # the cache says what its ranges are


def test_without_eval_data_disagreement_is_refused_or_repaired(tmp_path):
    path, train, _ = tiny_digits_onnx()
    _broken_cache(path, train, tmp_path / "refused")
    (tmp_path / "refused").mkdir(exist_ok=True)
    refused = quantize_int8(path, train, tmp_path / "refused", Int8Options(method="entropy", samples=256, guard=GuardSettings(repair=False)))
    assert not refused.deployable and refused.guard.mode == "agreement" and not refused.guard.holds
    assert "disagrees with FP32" in refused.reason and "refusing" in refused.reason
    assert refused.check.snr_db < 10
    (tmp_path / "repaired").mkdir()
    _broken_cache(path, train, tmp_path / "repaired")
    repaired = quantize_int8(path, train, tmp_path / "repaired", Int8Options(method="entropy", samples=256))
    assert repaired.deployable and repaired.check.top1_agreement >= 0.95 and repaired.check.snr_db > 15


def test_minmax_cache_header_and_bad_options(tmp_path):
    path, train, _ = tiny_digits_onnx()
    result = quantize_int8(path, train, tmp_path, Int8Options(method="minmax", samples=64, guard=None, verify_samples=64))
    assert read_header(result.trt_cache_path) == (100000, "MinMaxCalibration")
    assert result.guard is None and result.deployable and result.float_nodes == []
    with pytest.raises(UsageError, match="calibration method"):
        quantize_int8(path, train, tmp_path, Int8Options(method="kl"))
    with pytest.raises(UsageError, match="max-accuracy-drop"):
        quantize_int8(path, train, tmp_path, Int8Options(guard=GuardSettings(max_accuracy_drop=-1)))


def test_check_covers_every_output_with_snr():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((200, 10))
    boxes = rng.standard_normal((200, 5, 4))  # a detector head: not class scores
    good = judge(compare_outputs([logits, boxes], [logits + 0.01 * rng.standard_normal(logits.shape), boxes + 0.01 * rng.standard_normal(boxes.shape)], ["logits", "boxes"]))
    assert good.passed and good.top1_agreement > 0.95 and good.snr_db > 30
    # The classifier head agrees; the regression head is noise: the check fails and names it.
    bad = judge(compare_outputs([logits, boxes], [logits, rng.standard_normal(boxes.shape)], ["logits", "boxes"]))
    assert not bad.passed and bad.top1_agreement == 1.0 and "boxes: SNR" in bad.reason and "logits" not in bad.reason
    # A model with no classifier output is judged on SNR alone.
    only = judge(compare_outputs(boxes, boxes * 1.001))
    assert only.top1_agreement is None and only.passed


def test_flips_between_classes_float_cannot_tell_apart_do_not_fail_the_agreement():
    """Near-tied float scores (an untrained model's): INT8 flips many top-1s but the expected
    accuracy under FP32's own probabilities barely moves, so the check holds; the same number of
    flips away from confident predictions fails it."""
    rng = np.random.default_rng(1)
    n, classes = 400, 10
    tied = 0.01 * rng.standard_normal((n, classes))  # near-uniform softmax
    flipped = tied.copy()
    flip = rng.random(n) < 0.3
    second = np.argsort(tied, axis=1)[:, -2]
    flipped[flip, second[flip]] = tied[flip].max(axis=1) + 1e-3  # the runner-up wins on 30% of rows
    soft = judge(compare_outputs(tied, flipped))
    assert soft.top1_agreement < 0.75 and soft.confidence_agreement > 0.99 and soft.passed
    assert not judge(compare_outputs(tied, flipped), min_confidence_agreement=0.9999).passed  # the weighted bar is its own
    assert soft.expected_loss < 0.001 and judge(compare_outputs(tied, flipped), max_loss=0.01).passed  # the guard in points agrees
    confident = tied.copy()
    confident[np.arange(n), tied.argmax(1)] += 8.0  # the same top-1s, now with ~0.99 probability
    wrong = confident.copy()
    wrong[flip, second[flip]] = confident[flip].max(axis=1) + 1e-3
    hard = judge(compare_outputs(confident, wrong))
    assert hard.confidence_agreement < 0.75 and not hard.passed
    assert "weighted by FP32 confidence" in hard.reason
    guarded = judge(compare_outputs(confident, wrong), max_loss=0.01)
    assert not guarded.passed and guarded.expected_loss > 0.2 and "expected to lose" in guarded.reason


def test_the_guard_without_labels_needs_images_that_vouch_for_its_points():
    """The unlabelled guard is the labelled one's 1 point, vouched for (one-sided 95%) by the
    compared images: a RegNetX graph that flipped 8 of 256 confident predictions (97.0% weighted
    agreement, which the old 97% bar passed) lost 2.8 points on its test set and must fail; a
    few near-tied flips among 1,024 pass; no number of agreeing images under 299 can pass."""
    rng = np.random.default_rng(2)

    def confident(n):
        logits = rng.standard_normal((n, 10))
        logits[np.arange(n), rng.integers(0, 10, n)] += 9.0  # ~0.99 probability on the top-1
        return logits

    def flip(logits, rows):
        out = logits.copy()
        runner_up = np.argsort(logits, axis=1)[:, -2]
        out[rows, runner_up[rows]] = logits[rows].max(axis=1) + 1.0
        return out

    ref = confident(256)
    check = judge(compare_outputs(ref, flip(ref, np.arange(8))), max_loss=0.01)
    assert 0.96 < check.confidence_agreement < 0.975 and not check.passed
    assert check.loss_bound > 0.05 and "vouch only for a loss below" in check.reason
    assert judge(compare_outputs(ref, flip(ref, np.arange(8)))).passed  # the plain check (no guard) still passes it
    many = confident(1024)
    many[:5] = 0.0
    many[:5, 3], many[:5, 7] = 5.0, 5.0 - 1e-3  # five images FP32 cannot tell between two classes
    near = judge(compare_outputs(many, flip(many, np.arange(5))), max_loss=0.01)
    assert near.top1_agreement < 1.0 and near.expected_loss < 0.001 and near.passed
    few = confident(298)
    assert not judge(compare_outputs(few, few), max_loss=0.01).passed  # all agree, yet 298 images vouch only for ~1.0%
    enough = confident(299)
    assert judge(compare_outputs(enough, enough), max_loss=0.01).passed


def test_probability_outputs_are_not_softmaxed_again():
    from hadmc_deploy.calibration.verify_qdq import class_probabilities

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert np.allclose(class_probabilities(probs), probs)
    logits = np.log(probs) + 3.0
    assert np.allclose(class_probabilities(logits), probs)
    sigmoids = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])  # multi-label: no distribution to weigh by
    assert class_probabilities(sigmoids) is None
    flipped = sigmoids[:, [1, 0, 2]]
    check = judge(compare_outputs(sigmoids, flipped))
    assert check.confidence_agreement is None and check.top1_agreement == 0.0 and not check.passed


def test_int8_check_samples_shrink_for_expensive_models_only() -> None:
    """Beside labelled --eval data, 256 held-out samples; a ResNet-18 at 224 (1.8 GMACs each) gets
    128, never fewer. Without labels the check is the guard: as many as can vouch for 1 point."""
    from hadmc_deploy.build.sample_budget import MIN_INT8_GUARD_SAMPLES, MIN_VERIFY_SAMPLES, verify_samples
    from hadmc_deploy.calibration.quantize import Int8Options

    assert verify_samples(None) == verify_samples(10**6) == 256
    assert verify_samples(int(1.8e9)) == MIN_VERIFY_SAMPLES == 128
    assert verify_samples(10**6, guarding=True) == Int8Options().verify_samples == 1024
    assert verify_samples(int(1.8e9), guarding=True) == MIN_INT8_GUARD_SAMPLES == 473  # one image's worth of loss may still pass


def test_layers_floated_before_the_one_that_mattered_go_back_to_int8():
    """The repair floats layers in the order of a cheap sensitivity proxy; once the guard holds,
    the ones floated before the last go back to INT8 wherever it still holds (a stand-in measure
    here: it holds exactly when the culprit is in float, as the RegNetX's final Gemm was)."""
    from hadmc_deploy.calibration.guard import GuardOutcome, _Graph, _quantize_again
    from hadmc_deploy.calibration.verify_qdq import QdqCheck

    def measure(ranges, float_nodes):
        holds = "gemm" in float_nodes and "add_needed" in float_nodes
        return _Graph(ranges, list(float_nodes), None, QdqCheck(1000, 1.0 if holds else 0.98, 0.0, 0.0, 0.0), holds, Path("x.onnx"))

    measure.float_accuracy = None
    outcome = GuardOutcome("agreement", False, "", None, None, 1.0)
    outcome.float_node_reasons.update({n: "ranked" for n in ("user", "add_needed", "conv_a", "conv_b", "gemm")})
    current = measure(None, ["user", "add_needed", "conv_a", "conv_b", "gemm"])
    final = _quantize_again(measure, current, ["add_needed", "conv_a", "conv_b"], outcome, quiet_ui())
    assert final.holds and final.float_nodes == ["user", "add_needed", "gemm"]
    assert [s.action for s in outcome.steps] == ["quantize conv_b again", "quantize conv_a again", "quantize add_needed again"]
    assert "conv_a" not in outcome.float_node_reasons and "add_needed" in outcome.float_node_reasons


def test_a_classifier_ranks_layers_by_the_class_probability_that_moves():
    """Output SNR weighs every logit alike; top-1 flips happen where the leading logits are close.
    A small error on near-tied leaders moves far more probability than a larger one on a confident
    row, and the ranking of a real classifier's layers follows that measure."""
    from hadmc_deploy.calibration.qdq import write_qdq
    from hadmc_deploy.calibration.sensitivity import node_sensitivities, probability_shift, quantized_nodes

    confident = np.array([[12.0, 0.0, 0.0], [0.0, 12.0, 0.0]])
    tied = np.array([[3.0, 3.0, 0.0], [0.0, 3.0, 3.0]])
    assert probability_shift([tied], [tied + np.array([0.4, -0.4, 0.0])]) > 10 * probability_shift([confident], [confident + np.array([2.0, -2.0, 0.0])])
    assert probability_shift([np.ones((4, 5, 2))], [np.zeros((4, 5, 2))]) is None  # no classifier output: SNR ranks instead

    path, train, _ = tiny_digits_onnx()
    ranges = collect_ranges(path, train, method="minmax", num_samples=128)
    with tempfile.TemporaryDirectory() as tmp:
        qdq = write_qdq(path, ranges, Path(tmp) / "q.onnx")
        nodes = quantized_nodes(path, qdq)
        ranked = node_sensitivities(path, ranges, train.x[:32], nodes, qdq_kwargs={})
    shifts = [s.probability_shift for s in ranked]
    assert len(ranked) == len(nodes) and all(v is not None for v in shifts) and shifts == sorted(shifts, reverse=True)
    assert "of the class probability moves" in ranked[0].describe()
