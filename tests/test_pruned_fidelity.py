"""Without labelled --eval data, a pruned model that no longer agrees with the original does not
deploy (`build/fidelity.py`): the check's measures on hand-made outputs, its held-out images, and a
real build of a trained digits CNN pruned until it forgets, which exits 15 with the original deployed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_models import DIGITS_TRAIN, TINY_ARCH, train_tiny
from torch import nn

from hadmc_deploy.build.fidelity import held_out_images, pruned_agreement
from hadmc_deploy.build.sample_budget import MAX_CHECK_SAMPLES, MIN_CHECK_SAMPLES, check_samples
from hadmc_deploy.build.stages.decide import PRUNED_DISAGREES, pruned_exclusion
from hadmc_deploy.cli import main
from hadmc_deploy.data import ArrayDataset


class Fixed(nn.Module):
    """Returns stored outputs for the rows it is given (indexed by the input's first pixel)."""

    def __init__(self, outputs: np.ndarray) -> None:
        super().__init__()
        self.outputs = torch.from_numpy(outputs.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs[x[:, 0, 0, 0].long()]


def _index_images(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)


def test_same_model_passes_and_a_forgetful_one_fails() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 8, (512, 10))  # confident
    x = _index_images(512)
    same = pruned_agreement(Fixed(logits), Fixed(logits.copy()), x, "test images")
    assert same.judged and same.passed and same.top1_agreement == 1.0 and same.samples == 512
    shuffled = logits[rng.permutation(512)]
    worse = pruned_agreement(Fixed(logits), Fixed(shuffled), x, "test images")
    assert worse.judged and not worse.passed and worse.top1_agreement < 0.5
    # stopped after the first batch: it already had more disagreements than 512 images allow
    assert worse.samples == 64 and "stopped there" in worse.reason and "more than the 1 that 512 images allow" in worse.reason
    # the bound decides, not the rate seen: 512 images vouch for below 1% with 1 disagreement, not with 2 (99.6%)
    for flips, passes in ((1, True), (2, False)):
        moved = logits.copy()
        moved[-flips:] = moved[-flips:, ::-1]
        check = pruned_agreement(Fixed(logits), Fixed(moved), x, "t")
        assert check.passed is passes and check.samples == 512
    assert "vouches for a disagreement below 1.2% only (need below 1%)" in check.reason


def test_too_few_images_cannot_pass_even_when_all_agree() -> None:
    """206 images, all agreeing, vouch for a disagreement below 1.44% only: a pass needs 299."""
    from hadmc_deploy.build.fidelity import images_to_vouch, max_disagreements

    logits = np.random.default_rng(1).normal(0, 8, (299, 10))
    few = pruned_agreement(Fixed(logits), Fixed(logits.copy()), _index_images(206), "t")
    assert few.top1_agreement == 1.0 and few.samples == 206 and not few.passed
    assert "below 1.4% only (need below 1%; 299 images at least)" in few.reason
    enough = pruned_agreement(Fixed(logits), Fixed(logits.copy()), _index_images(299), "t")
    assert enough.passed
    assert images_to_vouch(0.01) == 299 and max_disagreements(298, 0.01) == -1
    assert [max_disagreements(n, 0.01) for n in (299, 512, 1024)] == [0, 1, 4]


def test_confidence_weighted_agreement_is_recorded_but_does_not_pass_a_model() -> None:
    """Near-uniform scores (an untrained or unsure original): flips between classes it cannot tell
    apart measure high weighted agreement, but only plain agreement bounds the accuracy lost."""
    rng = np.random.default_rng(1)
    flat = rng.normal(0, 0.01, (300, 10))
    flipped = flat + rng.normal(0, 0.01, flat.shape)
    check = pruned_agreement(Fixed(flat), Fixed(flipped), _index_images(300), "x")
    assert check.top1_agreement < 0.6 and check.confidence_agreement > 0.99 and not check.passed
    assert "top-1 agreement" in check.reason


def test_outputs_that_are_not_class_scores_are_not_judged_and_may_not_deploy_unlabelled() -> None:
    maps = np.random.default_rng(2).normal(size=(50, 4, 3, 3))
    check = pruned_agreement(Fixed(maps), Fixed(-maps), _index_images(50), "x")
    assert not check.judged and check.passed and check.top1_agreement is None and check.snr_db < 0
    # without labelled --eval data nothing shows such a pruned model agrees: it may not deploy
    assert pruned_exclusion({"agreement": check.to_dict()}).startswith("the pruned model's outputs are not class scores")


def test_exclusion_text_for_a_failed_or_unjudged_check_or_no_check_at_all() -> None:
    assert pruned_exclusion({}) == pruned_exclusion({"agreement": None}) == ""
    assert pruned_exclusion({"agreement": {"judged": True, "passed": True}}) == ""
    assert "not class scores" in pruned_exclusion({"agreement": {"judged": False, "passed": True, "source": "64 held-out images"}})
    text = pruned_exclusion({"agreement": {"judged": True, "passed": False, "source": "64 held-out images", "reason": "output0: top-1 agreement 30%"}})
    assert text.startswith("the pruned model is not shown to agree with the original") and "64 held-out images" in text
    assert pruned_exclusion({"unchecked": True}).startswith("the pruned model was checked on no data")


def test_held_out_images_are_the_ones_batchnorm_did_not_see() -> None:
    data = ArrayDataset(_index_images(300), np.zeros(300, dtype=np.int64), "d")
    seen = set(data.subset(200, seed=3).x.ravel().tolist())
    x, source, held_out = held_out_images(data, 200, 80, seed=3)
    assert held_out and len(x) == 80 and not seen & set(x.ravel().tolist()) and "held-out" in source
    # nothing left: the last images BatchNorm saw are reused, and the source says so
    x, source, held_out = held_out_images(data, 300, 80, seed=3)
    assert not held_out and len(x) == 80 and set(x.ravel().tolist()) <= set(range(300)) and "none held out" in source


def test_samples_shrink_with_an_expensive_model() -> None:
    assert check_samples(None) == MAX_CHECK_SAMPLES and check_samples(10**6) == MAX_CHECK_SAMPLES
    assert check_samples(int(1.8e9)) == MIN_CHECK_SAMPLES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("fidelity") / "tiny.pth", epochs=3)


def _build(tiny: Path, tmp_path: Path, keep: int, name: str, *extra: str) -> tuple[int, dict]:
    plan = tmp_path / f"plan{keep}.json"
    plan.write_text(json.dumps({"keep": {"0": keep, "3": keep}}))
    out = tmp_path / name
    rc = main(["build", str(tiny), "--arch", TINY_ARCH, "--target", "cpu", "--precision", "fp32", "--widths", str(plan), "--calib", DIGITS_TRAIN,
               "--no-measure-lut", "--batch", "1", "--runs", "3", "--warmup", "1", "-q", "--out", str(out), *extra])
    return rc, json.loads((out / "report.json").read_text())


def test_build_without_eval_keeps_a_pruned_model_that_forgot_from_deploying(tiny: Path, tmp_path: Path) -> None:
    """2 of 48 channels in each conv: neither BatchNorm recalibration nor distillation on the
    calibration images brings the pruned model back to the trained original; the build deploys
    the original and exits 15 naming the way out."""
    rc, report = _build(tiny, tmp_path, 2, "b")
    assert rc == 15
    agreement = report["recovery"]["agreement"]
    assert agreement["judged"] and not agreement["passed"] and agreement["top1_agreement"] < 0.9
    assert report["recovery"]["agreement_after_bn"] is not None  # the distillation was tried
    excluded = {c["name"]: c["excluded"] for c in report["decision"]["candidates"]}
    assert excluded["pruned-fp32"].startswith(PRUNED_DISAGREES) and not excluded["baseline-fp32"]
    assert report["decision"]["deploy"] == "baseline-fp32" and (tmp_path / "b" / "artifacts" / "cpu" / "deploy").is_dir()
    assert "--train" in report["decision"]["verdict"]["hint"] and "FAILED" in (tmp_path / "b" / "report.md").read_text()
    # accepted on purpose: the pruned model may deploy again
    rc, report = _build(tiny, tmp_path, 2, "allowed", "--allow-accuracy-drop")
    assert rc == 0 and not any(c["excluded"] for c in report["decision"]["candidates"])
    assert "accepted with --allow-accuracy-drop" in (tmp_path / "allowed" / "report.md").read_text()


def test_distillation_on_calibration_images_wins_agreement_back(tiny: Path, tmp_path: Path) -> None:
    """24 of 48 channels: BatchNorm recalibration alone leaves the pruned model far from the
    original; distilling it on the calibration images (their labels unused) closes much of the gap,
    measured on held-out images that chose nothing."""
    _, report = _build(tiny, tmp_path, 24, "d")
    rec = report["recovery"]
    before, after = rec["agreement_after_bn"]["top1_agreement"], rec["agreement"]["top1_agreement"]
    assert rec["mode"] == "distillation" and after > before + 0.2
    assert any("distilled from the original on" in m for m in rec["detail"]["messages"])
    assert "held-out" in rec["agreement"]["source"]


def test_distillation_effort_is_bounded_and_names_the_epochs_that_fit_it() -> None:
    """A small CNN gets CALIB_DISTILL_STEPS; a ResNet-18 at 224 (1.8 GMACs) fits under
    MIN_DISTILL_STEPS in the MACs budget, and the --epochs that would fit them are named."""
    from types import SimpleNamespace

    from hadmc_deploy.build.stages.recover import CALIB_DISTILL_STEPS, MIN_DISTILL_STEPS, distil_steps

    def ctx(macs: int, student: int, epochs: float = 1.0) -> SimpleNamespace:
        return SimpleNamespace(settings=SimpleNamespace(recovery=SimpleNamespace(epochs=epochs, batch_size=128)),
                               plan=SimpleNamespace(input_shape=(1, 3, 224, 224)), results={"load": {"macs": macs}, "surgery": {"macs": student}})

    assert distil_steps(ctx(5 * 10**6, 2 * 10**6))[0] == CALIB_DISTILL_STEPS
    steps, needed = distil_steps(ctx(int(1.8e9), int(0.9e9)))
    assert steps < MIN_DISTILL_STEPS and needed > 1
    assert distil_steps(ctx(int(1.8e9), int(0.9e9), epochs=needed))[0] >= MIN_DISTILL_STEPS


def test_prune_says_when_its_checkpoint_disagrees_with_the_original(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"keep": {"0": 2, "3": 2}}))
    assert main(["prune", str(tiny), "--arch", TINY_ARCH, "--target", "cpu", "--widths", str(plan), "--calib", DIGITS_TRAIN,
                 "--timing-rounds", "0", "-o", str(tmp_path / "p.pth"), "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not summary["recovery"]["agreement"]["passed"]
    assert any(n.startswith("the pruned model is not shown to agree with the original") for n in summary["notes"])


def test_build_with_no_images_at_all_does_not_deploy_an_unchecked_pruned_model(tiny: Path, tmp_path: Path) -> None:
    """No --train, --calib or --eval: the pruned model keeps the original's BatchNorm statistics and
    nothing can check it, so the original deploys (exit 15) unless the loss is accepted."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"keep": {"0": 24, "3": 24}}))
    common = [str(tiny), "--arch", TINY_ARCH, "--target", "cpu", "--precision", "fp32", "--widths", str(plan),
              "--no-measure-lut", "--batch", "1", "--runs", "3", "--warmup", "1", "-q"]
    assert main(["build", *common, "--out", str(tmp_path / "b")]) == 15
    decision = json.loads((tmp_path / "b" / "report.json").read_text())["decision"]
    excluded = {c["name"]: c["excluded"] for c in decision["candidates"]}
    assert excluded["pruned-fp32"].startswith("the pruned model was checked on no data") and decision["deploy"] == "baseline-fp32"
    assert "--calib" in decision["verdict"]["hint"]
    assert main(["build", *common, "--out", str(tmp_path / "a"), "--allow-accuracy-drop"]) == 0
