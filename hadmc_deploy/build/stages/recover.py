"""Stage 6, recover: win accuracy back by distillation from the original (fine-tuning on
--train, with a held-out split to pick the best epoch), or re-estimate BatchNorm statistics
alone when there is no training data. Then the pruned model is compared with the original
(`build/fidelity.py`); without --train, one that disagrees is distilled from the original on the
calibration images, whose labels are not needed for that. Accuracy on --eval is measured at every step."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.fidelity import PrunedAgreement, held_out_images, model_outputs, pruned_agreement
from hadmc_deploy.build.inputs import data_hash, dataset, loaded_model, macs_per_image, task
from hadmc_deploy.build.metric import DETECT, torch_score
from hadmc_deploy.build.sample_budget import MIN_CHECK_SAMPLES, bn_calib_samples, check_samples
from hadmc_deploy.build.stages.search import PLAN_FILE
from hadmc_deploy.build.stages.surgery import PRUNED_FILE
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.detection.distill import distill_detector
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.loading import load_model
from hadmc_deploy.options import RecoverySettings
from hadmc_deploy.pruned_checkpoint import save_pruned
from hadmc_deploy.recover import RecoveryOptions, RecoveryResult, recalibrate_bn, recover

RECOVERED_FILE = "recovered.pth"
#: at most this many training samples are held out to choose the best epoch.
HELD_OUT = 2000
#: without --train, a pruned model that BatchNorm recalibration leaves disagreeing with the original
#: (`build/fidelity.py`) is distilled from it on the calibration images for this many optimizer
#: steps (x --epochs): a VGG-style CNN on digits, pruned to 1.4x, went from 39.7% to 97.8% test
#: accuracy (original 98.6%) in 80 steps of 64 images, and held there to 160 ...
CALIB_DISTILL_STEPS = 100
#: ... and at most this many multiply-adds of training (x --epochs): about 20 s on 2 cores for a
#: ResNet-style CNN; a first check that needs no training, before any step is taken ...
CALIB_DISTILL_MACS = 1e12
#: ... and at most this many seconds (x --epochs), measured on the first steps and cut to fit
#: (recover.StepBudget): the multiply-add count misjudges depthwise and squeeze-excite networks ...
CALIB_DISTILL_SECONDS = 20.0
#: ... and not at all when fewer steps than this fit (a ResNet-18 at 224 fits 1: 74 s of a build,
#: mostly the passes around that step, for nothing); the log names the --epochs that fit them.
MIN_DISTILL_STEPS = 10
#: a distillation on calibration images chooses its epoch on this many of them (see distil_on_images)
SELECT_IMAGES = 256


def inputs(ctx: BuildContext) -> dict[str, Any]:
    r = ctx.settings.recovery
    return {**r.__dict__, "seed": ctx.settings.data.seed, "train_limit": ctx.settings.data.train_limit,
            "train": data_hash(ctx, "train"), "calib": data_hash(ctx, "calib"), "eval": data_hash(ctx, "eval")}


def split_held_out(train: ArrayDataset, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """A fixed held-out split of the training data: recovery never selects on --eval."""
    n_val = min(HELD_OUT, max(1, len(train) // 10))
    order = np.random.default_rng(seed).permutation(len(train))
    val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    tr = ArrayDataset(train.x[tr_idx], train.y[tr_idx], f"{train.source}[train split]", train.preprocess)
    val = ArrayDataset(train.x[val_idx], train.y[val_idx], f"{train.source}[{n_val} held out]", train.preprocess)
    return tr, val


def recovery_options(r: RecoverySettings, seed: int, n_train: int) -> RecoveryOptions:
    """The trainer's options. Fractional epochs (0.5) become one epoch capped at that share of its steps."""
    steps_per_epoch = max(1, math.ceil(n_train / r.batch_size))
    whole = max(1, math.ceil(r.epochs)) if r.epochs > 0 else 0
    cap = max(1, math.ceil(r.epochs * steps_per_epoch)) if 0 < r.epochs < 1 else None
    return RecoveryOptions(
        epochs=whole, lr=r.lr, batch_size=r.batch_size, distill=r.distill, temperature=r.kd_temperature, alpha=r.kd_alpha,
        feature_weight=r.feature_weight, feature_layers=tuple(r.feature_layers) or None, seed=seed, max_steps_per_epoch=cap,
    )


def run(ctx: BuildContext) -> StageResult:
    if ctx.results["surgery"].get("_skipped"):
        return StageResult({"mode": "none", "final": None}, skipped="no pruned model to recover")
    seed = ctx.settings.data.seed
    teacher = loaded_model(ctx)
    student = load_model(ctx.path(PRUNED_FILE)).model
    train, evald = dataset(ctx, "train"), dataset(ctx, "eval")
    acc: dict[str, float | None] = {"baseline": None, "pruned": None, "bn_recalibrated": None, "recovered": None}
    if train is not None:
        tr, val = split_held_out(train, seed) if task(ctx) != DETECT else (train, None)
        bn_data = tr
    else:
        calib = dataset(ctx, "calib")
        if calib is None:
            return StageResult({"mode": "none", "accuracy": acc, "final": PRUNED_FILE, "unchecked": evald is None}, [ctx.path(PRUNED_FILE)],
                               skipped="no --train or --calib data: the pruned model is used as is" + ("" if evald is not None else ", unchecked"))
        # No training data: `recover` only re-estimates BatchNorm statistics on these images; their
        # labels (if any) are not scored: calibration images need not be labelled for this model.
        tr, val = None, None
        bn_data = calib.subset(bn_calib_samples(macs_per_image(ctx, "surgery")), seed=seed)
    if evald is not None:
        acc["baseline"] = torch_score(teacher.model, evald)[0]
        acc["pruned"] = torch_score(student, evald)[0]
        bn_only = copy.deepcopy(student)
        recalibrate_bn(bn_only, bn_data)
        acc["bn_recalibrated"] = torch_score(bn_only.eval(), evald)[0]
    r = ctx.settings.recovery
    if task(ctx) == DETECT:
        # a detector's training loss is not ours to know: distil its raw outputs (detection/distill.py)
        outcome = distill_detector(student, teacher.model, train, epochs=r.epochs if train is not None else 0, lr=r.lr / 10, batch_size=min(r.batch_size, 32), seed=seed, ui=ctx.ui)
    else:
        outcome = recover(student, teacher.model, tr, val, recovery_options(r, seed, len(tr) if tr is not None else 0), ctx.ui, bn_data=bn_data)
        student = outcome.model
    student = student.eval()
    fidelity = Fidelity()
    if task(ctx) != DETECT and (evald is None or train is None):
        student, outcome, fidelity = judge_and_distil(ctx, teacher.model, student, outcome, val, bn_data, may_distil=train is None)
    agreement = fidelity.agreement
    if evald is not None:
        acc["recovered"] = torch_score(student, evald)[0]
    out = ctx.path(RECOVERED_FILE)
    save_pruned(out, student, teacher, _surgery_plan(ctx), ctx.plan.input_shape, extra={"stage": "recover"})
    ctx.forget(f"model:{RECOVERED_FILE}")
    summary = outcome.mode + (f": eval accuracy {acc['pruned']:.2f}% -> {acc['recovered']:.2f}% (baseline {acc['baseline']:.2f}%)" if acc["recovered"] is not None else "")
    trained_lr = getattr(outcome, "lr", None)
    if trained_lr is not None and trained_lr < r.lr:
        summary += f" (diverged at --lr {r.lr:g}: trained at --lr {trained_lr:g})"
    if getattr(outcome, "diverged", False):
        ctx.ui.warn(f"recovery: {outcome.messages[-1]}")
    if agreement is not None and agreement.judged:
        summary += (f"; top-1 agreement with the original {agreement.top1_agreement:.1%} ({agreement.confidence_agreement or agreement.top1_agreement:.1%} weighted) "
                    f"on {agreement.source}, a disagreement below {agreement.disagreement_bound:.1%} (95%)")
        if not agreement.passed and evald is None:
            then = ("--allow-accuracy-drop lets a build deploy it anyway" if ctx.settings.quantization.allow_accuracy_drop
                    else "a build will not deploy it; give --train data to recover it, or labelled --eval data to measure its accuracy")
            ctx.ui.warn(f"the pruned model is not shown to agree with the original ({agreement.reason}) on {agreement.source}: {then}"
                        + (f" ({fidelity.not_distilled})" if fidelity.not_distilled else ""))
    detail = json.loads(json.dumps(outcome.to_dict(), default=str))
    return StageResult({"mode": outcome.mode, "accuracy": acc, "agreement": agreement.to_dict() if agreement else None,
                        "agreement_decides": agreement is not None and evald is None, "agreement_after_bn": fidelity.after_bn.to_dict() if fidelity.after_bn else None,
                        "not_distilled": fidelity.not_distilled,
                        "detail": detail,
                        "final": RECOVERED_FILE, "_summary": summary}, [out])


@dataclass
class Fidelity:
    """The pruned model against the original (`build/fidelity.py`), and what was done about it."""

    agreement: PrunedAgreement | None = None
    #: the agreement BatchNorm recalibration alone left, when a distillation on calibration images followed
    after_bn: PrunedAgreement | None = None
    #: why a pruned model that disagreed was not distilled on the calibration images ("" when it was, or agreed)
    not_distilled: str = ""


def judge_and_distil(ctx: BuildContext, teacher: Any, student: Any, outcome: RecoveryResult, val: ArrayDataset | None,
                     bn_data: ArrayDataset, *, may_distil: bool) -> tuple[Any, RecoveryResult, Fidelity]:
    """Compare the recovered model with the original; when it disagrees and `may_distil` (no --train),
    distil it on the calibration images and compare again, on the same held-out images. Returns
    (model, outcome, fidelity)."""
    check_x, source = _check_images(ctx, val, bn_data)
    fidelity = Fidelity(pruned_agreement(teacher, student, check_x, source))
    r = ctx.settings.recovery
    if fidelity.agreement.passed or not may_distil or r.epochs <= 0:
        return student, outcome, fidelity
    steps, needed_epochs = distil_steps(ctx)
    if not fidelity.agreement.single_classifier_output:
        fidelity.not_distilled = "not distilled on the calibration images: the model has more outputs than one classifier's scores"
    elif steps < MIN_DISTILL_STEPS:
        fidelity.not_distilled = (f"not distilled on the calibration images: {steps} steps fit in --epochs {r.epochs:g}, "
                                  f"--epochs {needed_epochs:g} allows {MIN_DISTILL_STEPS}")
    elif len(check_x) < MIN_CHECK_SAMPLES:
        fidelity.not_distilled = (f"not distilled on the calibration images: the {len(check_x)} held-out images could not vouch for it afterwards "
                                  f"(a pass needs {MIN_CHECK_SAMPLES}: pass more images to --calib)")
    if fidelity.not_distilled:
        ctx.ui.log(f"the pruned model is not shown to agree with the original ({fidelity.agreement.reason}); {fidelity.not_distilled}")
        return student, outcome, fidelity
    ctx.ui.log(f"after BatchNorm recalibration the pruned model is not shown to agree with the original ({fidelity.agreement.reason}): "
               f"distilling it from the original on the calibration images (up to {steps} steps and {CALIB_DISTILL_SECONDS * r.epochs:.0f} s)")
    outcome = distil_on_images(ctx, student, teacher, bn_data, steps)
    student = outcome.model.eval()
    fidelity.after_bn, fidelity.agreement = fidelity.agreement, pruned_agreement(teacher, student, check_x, source)
    return student, outcome, fidelity


def _check_images(ctx: BuildContext, val: ArrayDataset | None, bn_data: ArrayDataset) -> tuple[np.ndarray, str]:
    """(images the pruned model is checked on, where they came from): the held-out split of
    --train, else calibration images that recovery did not see (`check_samples` of them at most)."""
    count = check_samples(macs_per_image(ctx))
    if val is not None:
        return val.x[:count], f"{min(count, len(val))} images held out of {val.source.split('[')[0]}"
    calib = dataset(ctx, "calib")
    x, source, _ = held_out_images(calib, len(bn_data), count, ctx.settings.data.seed)
    return x, source


def distil_steps(ctx: BuildContext) -> tuple[int, int]:
    """(optimizer steps a distillation on calibration images takes, the --epochs that would give it
    MIN_DISTILL_STEPS): CALIB_DISTILL_STEPS x --epochs, fewer where they would cost more than
    CALIB_DISTILL_MACS x --epochs (a step runs the original forward and the pruned model forward
    and backward, about 3x its forward)."""
    r = ctx.settings.recovery
    teacher_macs, student_macs = macs_per_image(ctx), macs_per_image(ctx, "surgery")
    steps = math.ceil(CALIB_DISTILL_STEPS * r.epochs)
    if not (teacher_macs and student_macs):
        return steps, 1
    per_step = r.batch_size * (teacher_macs + 3 * student_macs)
    return min(steps, int(CALIB_DISTILL_MACS * r.epochs // per_step)), math.ceil(MIN_DISTILL_STEPS * per_step / CALIB_DISTILL_MACS)


def distil_on_images(ctx: BuildContext, student: Any, teacher: Any, images: ArrayDataset, steps: int) -> RecoveryResult:
    """Distil the pruned model from the original on unlabelled images: the original's outputs are
    the targets (logit KD with alpha 1, so labels carry no weight, plus feature alignment), and an
    epoch is chosen by agreement with the original's top-1 on the first SELECT_IMAGES of those
    images (the starting point counts).

    Why choose on images it trains on: the held-out images are all kept for the check that
    follows, whose bound needs every one of them (a pass needs 299 at least; halving the 413 left
    of the digits set made every distilled model fail for want of images). A choice that favours
    a later epoch costs nothing the check would not catch: the model only distils when it had
    already failed, and it deploys only if it passes on the held-out images."""
    r, seed = ctx.settings.recovery, ctx.settings.data.seed
    per_epoch = max(1, math.ceil(len(images) / r.batch_size))
    train = ArrayDataset(images.x, _top1(teacher, images.x), f"{images.source} (labels: the original's top-1)", images.preprocess)
    select_x = images.x[:SELECT_IMAGES]
    select = ArrayDataset(select_x, _top1(teacher, select_x), f"{len(select_x)} of the calibration images it distils on (labels: the original's top-1)", images.preprocess)
    opts = replace(recovery_options(r, seed, len(train)), alpha=1.0, epochs=math.ceil(steps / per_epoch), max_steps_per_epoch=min(steps, per_epoch),
                   max_seconds=CALIB_DISTILL_SECONDS * r.epochs, min_steps=MIN_DISTILL_STEPS)
    outcome = recover(student, teacher, train, select, opts, ctx.ui)
    # `recover` names its training set "the training data"; here that is the calibration images
    outcome.messages = [m.replace("the training data", "the calibration images") for m in outcome.messages]
    budget = outcome.budget
    if budget and budget["stopped"]:
        needed = math.ceil(MIN_DISTILL_STEPS * budget["step_seconds"] / CALIB_DISTILL_SECONDS)
        outcome.messages.append(f"distillation on the calibration images stopped after {outcome.steps} steps: a step took {budget['step_seconds']:.1f} s, "
                                f"so {MIN_DISTILL_STEPS} steps do not fit in {budget['seconds']:.0f} s (--epochs {needed} would allow them)")
        ctx.ui.log(outcome.messages[-1])
    elif budget:
        outcome.messages.append(f"distillation cut from {budget['planned_steps']} to {budget['steps']} steps: a step took {budget['step_seconds']:.2f} s "
                                f"and the budget is {budget['seconds']:.0f} s (x --epochs)")
        ctx.ui.log(outcome.messages[-1])
    outcome.messages.append(f"no --train data: distilled from the original on {len(train)} calibration images for {outcome.steps} steps "
                            "(their labels unused: the original's outputs are the targets)")
    return outcome


def _top1(model: Any, x: np.ndarray) -> np.ndarray:
    return model_outputs(model, x)[0].reshape(len(x), -1).argmax(1).astype(np.int64)


def _surgery_plan(ctx: BuildContext) -> WidthPlan:
    """The surgery's plan with the kept indices filled in (so a pruned checkpoint replays exactly)."""
    info = load_model(ctx.path(PRUNED_FILE)).info
    recorded = info.get("plan") if isinstance(info, dict) else None
    if isinstance(recorded, dict):
        recorded = json.dumps(recorded)
    if isinstance(recorded, str):
        return WidthPlan.from_json(recorded)
    return WidthPlan.from_json(Path(ctx.path(PLAN_FILE)).read_text())


STAGE = Stage("recover", run, inputs, ("surgery",))
