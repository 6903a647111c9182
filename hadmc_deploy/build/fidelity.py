"""Without labelled --eval data, how far the pruned model's outputs moved from the original's.

Why: a build without --eval measured no accuracy, so nothing stopped it deploying a pruned model
that had lost most of what the original knew (a VGG-style CNN on digits, pruned to 1.4x with
BatchNorm recalibration only, agreed with its 98.6%-accurate original on 27.8% of the test
images, and the build exited 0). The check compares the two models' classifier outputs on
images that neither the recovery nor the BatchNorm statistics saw, by top-1 agreement: the share
of images on which both pick the same class. Whatever the labels, the pruned model's top-1
accuracy is at most that share's complement below the original's, so the check bounds the loss
without labels (on images like the check's: see MIN_PRUNED_AGREEMENT for why that is no
guarantee). The agreement weighted by the original's confidence (`calibration.verify_qdq`) is
recorded beside it but does not pass a model: it rests on the original's probabilities being
calibrated, and a digits CNN whose original scored 78.6% measured 97.7% weighted (83.0% plain)
while losing 12.8 points on the labelled test set. A random-weight original therefore fails the
check after most prunings: build it with --allow-accuracy-drop when only speed matters.
Outputs that are not classifier scores cannot be judged without labels: they are recorded, not
judged, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hadmc_deploy.calibration.verify_qdq import compare_outputs
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.evaluate import output_tensors
from hadmc_deploy.plan import DEFAULT_ACCURACY_GUARD

#: a pruned classifier passes when its top-1 agreement with the original reaches this: its accuracy
#: loss on images like the held-out ones is then at most the 1 point the guard allows with --eval
#: (DEFAULT_ACCURACY_GUARD). A looser 97% let a ShuffleNetV2 on digits deploy at 98.5% agreement on
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
    order = np.random.default_rng(seed).permutation(len(data))
    rest = np.sort(order[used : used + count])
    if len(rest) >= min(count, 64):
        return data.x[rest], f"{len(rest)} held-out images of {data.source}", True
    x = data.x[np.sort(order[:used])][-count:]
    return x, f"{len(x)} images of {data.source} that BatchNorm recalibration also saw (none held out: pass more to --calib)", False


def model_outputs(model: Any, x: np.ndarray, batch_size: int = 64) -> list[np.ndarray]:
    """Every output of a PyTorch model in eval mode over `x` (tensors, or tuples/lists/dicts of them)."""
    import torch

    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # recovery may have left it on a GPU
    chunks: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
                chunks.append([t.float().cpu().numpy() for t in output_tensors(model(xb))])
    finally:
        model.train(was_training)
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))] if chunks else []


def pruned_agreement(original: Any, pruned: Any, x: np.ndarray, source: str, *, min_agreement: float = MIN_PRUNED_AGREEMENT) -> PrunedAgreement:
    """Compare the pruned model with the original on `x`; see the module docstring for the criterion."""
    check = compare_outputs(model_outputs(original, x), model_outputs(pruned, x))
    problems = []
    for out in check.outputs:
        if out.top1_agreement is None:
            continue
        if out.top1_agreement < min_agreement:
            problems.append(f"{out.name}: top-1 agreement {out.top1_agreement:.1%} (need {min_agreement:.0%})")
    judged = check.top1_agreement is not None
    single = len(check.outputs) == 1 and check.outputs[0].top1_agreement is not None
    bound = disagreement_bound(check.top1_agreement, check.samples) if judged else None
    return PrunedAgreement(check.samples, source, check.top1_agreement, check.confidence_agreement, check.snr_db, judged,
                           passed=not problems, reason="; ".join(problems), single_classifier_output=single, disagreement_bound=bound)


def disagreement_bound(agreement: float, samples: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on the disagreement rate after `samples` images agreed
    at `agreement`: the p at which seeing so few disagreements has probability 1 - `confidence`.
    Why: 206 images at 100% agreement vouch only for under 1.4%, above the 1-point guard; in the
    unlabelled closed-loop matrix (docs/closed_loop_unlabelled.md) such a build lost 1.4 points on
    the test set. Bisection on the binomial CDF (no SciPy in the core install)."""
    if samples <= 0:
        return 1.0
    k = round((1.0 - agreement) * samples)
    if k >= samples:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(samples, p)
        if p <= 0.0:
            return 1.0
        if p >= 1.0:
            return 0.0
        log_p, log_q = math.log(p), math.log1p(-p)
        return sum(math.exp(math.lgamma(samples + 1) - math.lgamma(i + 1) - math.lgamma(samples - i + 1) + i * log_p + (samples - i) * log_q)
                   for i in range(k + 1))

    low, high = k / samples, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1.0 - confidence else (low, mid)
    return high
