"""Plain supervised training and evaluation on an `ArrayDataset` (CPU-friendly, seeded).

Used by the demo and the benchmarks to produce models trained on real data;
distillation-based recovery lives in `recover.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import TrainingDivergedError
from hadmc_deploy.evaluate import first_output, torch_accuracy
from hadmc_deploy.ui import UI, quiet_ui


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def evaluate_accuracy(model: nn.Module, data: ArrayDataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent (the project's one definition: `evaluate.torch_accuracy`)."""
    return torch_accuracy(model, data, batch_size=batch_size)


def train_classifier(
    model: nn.Module,
    train: ArrayDataset,
    *,
    epochs: int = 2,
    lr: float = 0.05,
    batch_size: int = 128,
    weight_decay: float = 5e-4,
    seed: int = 0,
    ui: UI | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """SGD with momentum and a cosine schedule; stops with a clear error if the loss turns NaN.
    `on_epoch(epoch, model)` runs after every epoch (in eval mode; training resumes after it),
    e.g. to record test accuracy and show where training converged."""
    ui = ui or quiet_ui()
    gen = seed_everything(seed)
    x = torch.from_numpy(train.x)
    y = torch.from_numpy(train.y)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with ui.progress("train", epochs * steps_per_epoch) as task:
        for epoch in range(epochs):
            order = torch.randperm(len(train), generator=gen)
            seen = correct = 0
            total_loss = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                logits = first_output(model(xb))  # a model with an auxiliary head in training trains on its main output, as recovery does
                loss = loss_fn(logits, yb)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}", hint="lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                total_loss += float(loss.detach()) * len(idx)
                task.advance()
                task.update(info=f"epoch {epoch + 1}/{epochs} loss {total_loss / seen:.3f} acc {100 * correct / seen:.1f}%")
            if on_epoch is not None:
                model.eval()
                with torch.no_grad():
                    on_epoch(epoch + 1, model)
                model.train()
    model.eval()
    return model
