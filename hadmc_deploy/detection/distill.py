"""Recovery for a pruned detector: distil the original's raw head maps into the pruned one.

Why outputs, not the training loss: the build is handed a trained detector and images, not the
detector's training recipe (assigner, loss weights, augmentation). Matching the teacher's raw
box and class maps (mean squared error over every level) needs no labels and no recipe, and
the teacher's maps carry everything its decoding turns into boxes. BatchNorm statistics are
re-estimated first, as for classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.graph.check import output_tensors
from hadmc_deploy.recover import recalibrate_bn
from hadmc_deploy.ui import UI, quiet_ui


@dataclass
class DistillResult:
    mode: str
    steps: int
    final_loss: float | None
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def distill_detector(student: nn.Module, teacher: nn.Module, train: ArrayDataset | None, *, epochs: float, lr: float, batch_size: int,
                     seed: int = 0, ui: UI | None = None) -> DistillResult:
    """BN recalibration, then `epochs` of output distillation (fractions allowed) on `train`'s images."""
    ui = ui or quiet_ui()
    if train is None:
        return DistillResult("none", 0, None, ["no training images: the pruned detector is used as cut"])
    n_bn = recalibrate_bn(student, train)
    result = DistillResult("bn-recalibration", 0, None, [f"BatchNorm statistics of {n_bn} layers re-estimated"])
    steps_per_epoch = max(1, int(np.ceil(len(train) / batch_size)))
    total = max(1, int(round(epochs * steps_per_epoch))) if epochs > 0 else 0
    if total == 0:
        return result
    torch.manual_seed(seed)
    teacher.eval()
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    start = {k: v.detach().clone() for k, v in student.state_dict().items()}
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    with ui.progress("distilling the detector's outputs", total) as bar:
        for step in range(total):
            idx = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
            x = torch.from_numpy(train.x[idx])
            with torch.no_grad():
                targets = output_tensors(teacher(x))
            preds = output_tensors(student(x))
            loss = sum(nn.functional.mse_loss(p, t) for p, t in zip(preds, targets, strict=True))
            if not torch.isfinite(loss):
                student.load_state_dict(start)
                result.messages.append(f"distillation diverged at step {step}: kept the BN-recalibrated weights")
                losses = []
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            bar.advance()
    student.eval()
    result.mode = "output-distillation"
    result.steps = len(losses)
    result.final_loss = float(np.mean(losses[-10:])) if losses else None
    result.messages.append(f"{len(losses)} steps of output distillation (Adam, lr {lr:g}); final loss {result.final_loss}")
    return result
