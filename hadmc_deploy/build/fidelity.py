"""Without labelled --eval data, how far the pruned model's outputs moved from the original's.

Why: a build without --eval measured no accuracy, so nothing stopped it deploying a pruned model
that had lost most of what the original knew (a VGG-style CNN on digits, pruned to 1.4x with
BatchNorm recalibration only, agreed with its 98.6%-accurate original on 27.8% of the test
images, and the build exited 0). The check compares the two models' classifier outputs on
images that neither the recovery nor the BatchNorm statistics saw, by top-1 agreement: the share
of images on which both pick the same class. Whatever the labels, the pruned model's top-1
accuracy is at most the disagreement rate below the original's, so the check bounds the loss
without labels (on images like the check's: see MIN_PRUNED_AGREEMENT for why that is no
guarantee). A model passes when its images vouch for that: the one-sided 95% upper bound on the
disagreement rate (`disagreement_bound`) is below the 1-point guard, not merely the rate seen
(2 disagreements of 206 images read 99.0% and passed a 99% bar; that ShuffleNetV2 lost 5.3 points
on the test set). So a pass needs 299 images at least, all agreeing, or more with a few
disagreements (1 of 512, 4 of 1,024). The agreement weighted by the original's confidence (`calibration.verify_qdq`) is
recorded beside it but does not pass a model: it rests on the original's probabilities being
calibrated, and a digits CNN whose original scored 78.6% measured 97.7% weighted (83.0% plain)
while losing 12.8 points on the labelled test set. A random-weight original therefore fails the
check after most prunings: build it with --allow-accuracy-drop when only speed matters.
Outputs that are not classifier scores cannot be judged without labels: they are recorded, and
without labelled --eval data such a pruned model does not deploy (`decide.pruned_exclusion`) unless
--allow-accuracy-drop says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hadmc_deploy.calibration.verify_qdq import compare_outputs, is_classifier
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.evaluate import output_tensors
from hadmc_deploy.plan import DEFAULT_ACCURACY_GUARD
from hadmc_deploy.vouch import disagreement_bound, images_to_vouch, max_disagreements

#: a pruned classifier passes when its check images vouch (95%, one-sided) for a top-1 agreement with
#: the original of at least this: its accuracy loss on images like the held-out ones is then at most
#: the 1 point the guard allows with --eval (DEFAULT_ACCURACY_GUARD). A looser 97% let a ShuffleNetV2 on digits deploy at 98.5% agreement on
#: held-out training images while it lost 3.3 points on the test set: an original fits its own
#: training images better than unseen ones, so agreement measured there is optimistic.
MIN_PRUNED_AGREEMENT = 1.0 - DEFAULT_ACCURACY_GUARD / 100.0


@dataclass(frozen=True)
class PrunedAgreement:
    samples: int
    source: str  # which images, and whether they were held out
    top1_agreement: float | None  # the worst classifier output's; None: no classifier output
    confidence_agreement: float | None  # recorded, not judged (see the module docstring)
    snr_db: float  # the worst output's (recorded; not judged: pruning changes logit scales)
    judged: bool  # False: no classifier output, so without labels nothing can be judged
    passed: bool
    reason: str
    #: True when the model has one output, (N, classes) scores: what distillation can train on
    single_classifier_output: bool = False
    #: one-sided 95% upper bound on the top-1 disagreement rate on images like the check's
    #: (`disagreement_bound`): what `samples` images can vouch for, whatever the point estimate
    disagreement_bound: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def held_out_images(data: ArrayDataset, used: int, count: int, seed: int) -> tuple[np.ndarray, str, bool]:
    """(up to `count` images of `data` past the first `used` of its seeded shuffle (the images
    `ArrayDataset.subset(used, seed)` took), where they came from, whether they are held out): the
    last used ones are reused, and the source says so, when fewer than 64 are left."""
    order = data.shuffled_order(seed)
    rest = np.sort(order[used : used + count])
    if len(rest) >= min(count, 64):
        return data.x[rest], f"{len(rest)} held-out images of {data.source}", True
    x = data.x[np.sort(order[:used])][-count:]
    return x, f"{len(x)} images of {data.source} that BatchNorm recalibration also saw (none held out: pass more to --calib)", False


def model_outputs(model: Any, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Every output of a PyTorch model in eval mode over `x` (tensors, or tuples/lists/dicts of them)."""
    with _evaluating(model):
        chunks = [_batch_outputs(model, x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    return _columns(chunks)


@contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """The model in eval mode, its training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _batch_outputs(model: Any, xb: np.ndarray) -> list[np.ndarray]:
    """The model's outputs on one batch, without gradients (the caller sets eval mode). Not a
    generator on purpose: a `torch.no_grad()` held across a yield leaves gradients off in the
    caller's thread until the generator is closed, and the check stops early."""
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # recovery may have left it on a GPU
    with torch.no_grad():
        return [t.float().cpu().numpy() for t in output_tensors(model(torch.from_numpy(np.ascontiguousarray(xb)).to(device)))]


def pruned_agreement(original: Any, pruned: Any, x: np.ndarray, source: str, *, min_agreement: float = MIN_PRUNED_AGREEMENT,
                     batch_size: int = 64) -> PrunedAgreement:
    """Compare the pruned model with the original on `x`; see the module docstring for the criterion.

    The images are compared a batch at a time, and the comparison stops once the disagreements
    seen already fail the check whatever the rest would show (`max_disagreements` of all of `x`):
    a pruned model that forgot most of what the original knew is told after one batch instead of
    after every image (a random-weight ResNet-18 at 224 spent 3 s of a build on 128 of them)."""
    allowed = max_disagreements(len(x), 1.0 - min_agreement)
    refs: list[list[np.ndarray]] = []
    cands: list[list[np.ndarray]] = []
    disagreements: dict[int, int] = {}  # per classifier output
    with _evaluating(original), _evaluating(pruned):
        for start in range(0, len(x), batch_size):
            ref, cand = _batch_outputs(original, x[start : start + batch_size]), _batch_outputs(pruned, x[start : start + batch_size])
            refs.append(ref)
            cands.append(cand)
            for k, (r, c) in enumerate(zip(ref, cand, strict=True)):
                if is_classifier(r):
                    disagreements[k] = disagreements.get(k, 0) + int((r.argmax(1) != c.argmax(1)).sum())
            if allowed >= 0 and max(disagreements.values(), default=0) > allowed:
                break  # fails whatever the rest shows (with too few images to pass at all, all are still compared: the report shows their agreement)
    seen = sum(len(r[0]) for r in refs)
    check = compare_outputs(_columns(refs), _columns(cands))
    rate = 1.0 - min_agreement
    problems = []
    for k, out in enumerate(check.outputs):
        if out.top1_agreement is None:
            continue
        bound = disagreement_bound(out.top1_agreement, check.samples)
        if seen < len(x) and disagreements.get(k, 0) > allowed:
            problems.append(f"{out.name}: top-1 agreement {out.top1_agreement:.1%} on the first {seen} of {len(x)} images, stopped there: "
                            f"{_count(disagreements[k], 'disagreement')}, more than the {allowed} that {len(x)} images allow to vouch for a disagreement below {rate:.0%}")
        elif seen == len(x) and bound > rate + 1e-12:
            fewest = f"; {images_to_vouch(rate)} images at least" if allowed < 0 else ""
            problems.append(f"{out.name}: top-1 agreement {out.top1_agreement:.1%} of {check.samples} images vouches for a disagreement below "
                            f"{bound:.1%} only (need below {rate:.0%}{fewest})")
    judged = check.top1_agreement is not None
    single = len(check.outputs) == 1 and check.outputs[0].top1_agreement is not None
    bound = disagreement_bound(check.top1_agreement, check.samples) if judged else None
    return PrunedAgreement(check.samples, source, check.top1_agreement, check.confidence_agreement, check.snr_db, judged,
                           passed=not problems, reason="; ".join(problems), single_classifier_output=single, disagreement_bound=bound)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _columns(chunks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per output, its batches joined."""
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))] if chunks else []
