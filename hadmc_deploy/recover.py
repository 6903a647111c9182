"""Win back the accuracy pruning cost: distillation fine-tuning, or BN recalibration alone.

`recover(student, teacher, train, val, RecoveryOptions(...), ui)` fine-tunes
the pruned `student` on `train` with

    loss = (1 - alpha) * CE(student, labels)
         + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))        (logit KD, Hinton 2015)
         + beta * sum_layers MSE(P(f_student), f_teacher) / mean(f_teacher^2)   (feature alignment)

where the features are the outputs of chosen blocks (forward hooks on module
names present in both models) and P is a learned 1x1 convolution where the
pruned block is narrower than the original (identity where widths agree). P
starts at the least-squares fit on the first batch, so the feature term is
meaningful from the first step; dividing by the teacher's mean square makes
beta independent of the activations' scale.

Before training, and on its own when no training data is given, BatchNorm
running statistics are re-estimated on the data (pruning changes every
downstream activation distribution, and stale statistics are most of the
accuracy a pruned model loses before any fine-tuning).

Best checkpoint by validation accuracy (the starting point counts, so recovery
never returns something worse than it was given); seeded and deterministic on
CPU. A NaN/Inf loss stops training and keeps the best state; one before the first
epoch ends starts the run again at a tenth of the learning rate (twice at most).

Under `torchrun` (RANK/WORLD_SIZE in the environment) the same call runs DDP:
gloo on CPU, NCCL on GPU, a `DistributedSampler` so each process sees its
share, logging and checkpoint writing on rank 0 only. `--batch-size` is per process.

Long because distillation, feature alignment, BN recalibration, divergence handling and DDP are
parts of one training loop; split apart, each piece would need the loop's state passed around.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.distributed import epoch_order, init_distributed, sync_buffers
from hadmc_deploy.errors import TrainingDivergedError, UsageError
from hadmc_deploy.evaluate import first_output, output_tensors, torch_accuracy
from hadmc_deploy.fileio import atomic_path
from hadmc_deploy.ui import UI, quiet_ui


@dataclass(frozen=True)
class RecoveryOptions:
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    distill: bool = True
    temperature: float = 4.0
    #: weight of the KD term; (1 - alpha) goes to cross-entropy on the labels.
    alpha: float = 0.7
    #: weight of the feature-alignment term (0 switches it off).
    feature_weight: float = 1.0
    #: module names whose outputs are aligned; None picks the main blocks automatically.
    feature_layers: tuple[str, ...] | None = None
    bn_recalib_batches: int = 32
    #: cap on optimizer steps per epoch (equal-budget benchmarks); None: whole epoch.
    max_steps_per_epoch: int | None = None
    #: a time budget in seconds: once the first steps are timed, the run is cut to the steps that fit
    #: (whole epochs where one fits; see `StepBudget`). None: every planned step, however long.
    max_seconds: float | None = None
    #: with `max_seconds`: when fewer steps than this fit, training stops where it is (the starting
    #: point still counts, so nothing worse is returned) instead of running a few steps for nothing.
    min_steps: int = 1
    seed: int = 0
    checkpoint_path: str | None = None
    #: "auto" (CUDA if present), "cpu" or "cuda".
    device: str = "auto"

    def validate(self) -> None:
        if self.epochs < 0:
            raise UsageError(f"--epochs {self.epochs} must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr {self.lr} must be a positive number")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be >= 1")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise UsageError(f"a recovery time budget of {self.max_seconds} s must be positive")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--kd-alpha {self.alpha} must lie in [0, 1]")
        if self.temperature <= 0:
            raise UsageError(f"--kd-temperature {self.temperature} must be positive")


@dataclass
class RecoveryResult:
    model: nn.Module
    #: "distillation", "fine-tune" (labels only), "bn-recalibration" or "none"
    mode: str
    accuracy_before: float | None
    accuracy_after_bn: float | None
    accuracy_after: float | None
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    messages: list[str] = field(default_factory=list)
    feature_layers: list[str] = field(default_factory=list)
    world_size: int = 1
    rank: int = 0
    checkpoint_path: str | None = None
    #: optimizer steps taken (all epochs)
    steps: int = 0
    #: with a time budget: what was measured and what it cut (StepBudget.to_dict), else None
    budget: dict[str, Any] | None = None
    #: the learning rate of the run kept (lower than asked after a diverged start; None: no training)
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "model"}


class StepBudget:
    """Fits a training run into a time budget by measuring it, not by predicting it.

    Why measured: a step's cost in multiply-adds says little about its time in PyTorch on a CPU;
    depthwise and squeeze-excite networks ran about 5x slower per multiply-add than ResNets here
    (EfficientNet-B0 at 64x64: 104 distillation steps sized by multiply-adds took 106 s, not ~20 s).
    The first step warms the allocator and is not timed; the next two are, and the plan is cut
    once, then: to whole epochs where at least one fits, else to the steps of one epoch that fit."""

    WARM_STEPS = 1
    TIMED_STEPS = 2

    def __init__(self, seconds: float, min_steps: int, epochs: int, steps_per_epoch: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.seconds, self.min_steps = seconds, min_steps
        self.planned = (epochs, steps_per_epoch)
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.start = self.clock()
        self.warm_at: float | None = None
        self.step_seconds: float | None = None
        self.stop = False  # fewer than min_steps fit: stop after the step just taken

    def after_step(self, done: int) -> bool:
        """Record that `done` steps are finished; True when this call cut the plan (epochs/steps changed or stop)."""
        if self.step_seconds is not None:
            return False
        now = self.clock()
        if done == self.WARM_STEPS:
            self.warm_at = now
            return False
        if self.warm_at is None or done < self.WARM_STEPS + self.TIMED_STEPS:
            return False
        self.step_seconds = max((now - self.warm_at) / (done - self.WARM_STEPS), 1e-9)
        fit = done + int(max(self.seconds - (now - self.start), 0.0) / self.step_seconds)
        if fit >= self.epochs * self.steps_per_epoch:
            return False
        if fit < self.min_steps:
            self.stop = True
        elif fit >= self.steps_per_epoch:
            self.epochs = fit // self.steps_per_epoch
        else:
            self.epochs, self.steps_per_epoch = 1, fit
        return True

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "step_seconds": self.step_seconds, "planned_steps": self.planned[0] * self.planned[1],
                "steps": None if self.stop else self.total, "stopped": self.stop, "min_steps": self.min_steps}


# -- losses ---------------------------------------------------------------------------------------
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student) at temperature T, averaged over the batch (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def feature_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """MSE relative to the teacher's mean square: scale-free across layers and models."""
    return F.mse_loss(student_feat, teacher_feat) / (teacher_feat.pow(2).mean() + 1e-8)


#: times a run that diverged before its first epoch ended starts again, each at a tenth of the rate
DIVERGED_RETRIES = 2


# -- BN recalibration -----------------------------------------------------------------------------
@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: ArrayDataset, *, batches: int = 32, batch_size: int = 128, device: str | torch.device = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var as a plain average over `batches` batches.

    Returns the number of BatchNorm layers reset (0: nothing to do)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        with torch.no_grad():  # statistics only: no autograd graph (a ResNet-18 at 224 ran ~1.5x slower with one)
            for i, (xb, _) in enumerate(data.batches(batch_size)):
                if i >= batches:
                    break
                model(torch.from_numpy(xb).to(device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def accuracy(model: nn.Module, data: ArrayDataset, *, batch_size: int = 256, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy in percent; NaN outputs count as wrong (`evaluate.torch_accuracy`)."""
    return torch_accuracy(model, data, batch_size=batch_size, device=device)


# -- feature taps ---------------------------------------------------------------------------------
def _probe_outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return out


def auto_feature_layers(student: nn.Module, teacher: nn.Module, example: torch.Tensor, limit: int = 3) -> list[str]:
    """The last few top-level blocks (containers with weights) whose 4-D outputs match in
    batch and spatial size in both models: ResNet stages, a MobileNet's feature stages."""

    def blocks(model: nn.Module, prefix: str = "") -> list[str]:
        names = []
        for name, child in model.named_children():
            if isinstance(child, nn.Identity) or not any(True for _ in child.children()):
                continue
            if any(p.requires_grad for p in child.parameters()):
                names.append(prefix + name)
        return names

    candidates = blocks(student)
    if len(candidates) == 1:  # one big container (e.g. `features`): look one level inside
        inner = candidates[0]
        candidates = blocks(student.get_submodule(inner), inner + ".") or candidates
    teacher_names = {n for n, _ in teacher.named_modules()}
    candidates = [n for n in candidates if n in teacher_names]
    if not candidates:
        return []
    s_out = _probe_outputs(student, candidates, example)
    t_out = _probe_outputs(teacher, candidates, example)
    good = []
    for n in candidates:
        s, t = s_out.get(n), t_out.get(n)
        if isinstance(s, torch.Tensor) and isinstance(t, torch.Tensor) and s.dim() == 4 and t.dim() == 4 and s.shape[2:] == t.shape[2:] and s.shape[2] * s.shape[3] > 1:
            good.append(n)
    return good[-limit:]


class _DistillStudent(nn.Module):
    """The student plus its feature projections, as one module so DDP syncs both."""

    def __init__(self, student: nn.Module, layers: list[str], projections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.layers = list(layers)
        self.projections = nn.ModuleDict({n.replace(".", "__"): projections[n] for n in layers})
        self._features: dict[str, torch.Tensor] = {}
        self._handles = [student.get_submodule(n).register_forward_hook(self._tap(n)) for n in layers]

    def _tap(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self._features[name] = output

        return hook

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._features = {}
        logits = self.student(x)
        return logits, [self.projections[n.replace(".", "__")](self._features[n]) for n in self.layers]

    def detach_hooks(self) -> nn.Module:
        for h in self._handles:
            h.remove()
        return self.student


#: the ridge on the feature projection's least-squares fit, relative to the student features' mean
#: square: a pruned DenseNet-style CNN's concatenated features were so nearly collinear (their Gram
#: matrix's condition number 1e8) that the plain fit's weights reached 377 and distillation
#: diverged within 8 steps at --lr 0.01 and 0.001. With this ridge they stay below 5, the fit leaves
#: 13.9% of the teacher's mean square (13.2% at a tenth of the ridge, 16.5% at ten times it) and
#: training converged: that build's pruned model recovered from 10.0% to 65.6% and deployed
#: (scratch /tmp/s40/fc/repro.py and the build it reran, 2026-12-05).
PROJECTION_RIDGE = 1e-3


def _fit_projection(s: torch.Tensor, t: torch.Tensor) -> nn.Module:
    """A 1x1 conv from the student's channels to the teacher's, ridge-regression fitted on one batch
    (`PROJECTION_RIDGE`)."""
    if s.shape[1] == t.shape[1]:
        return nn.Identity()
    proj = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
    a = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1]).double()
    b = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).double()
    gram = a.T @ a
    ridge = PROJECTION_RIDGE * float(gram.diagonal().mean()) + 1e-12
    solution = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), a.T @ b)  # (s_c, t_c)
    with torch.no_grad():
        proj.weight.copy_(solution.T.float()[:, :, None, None])
    return proj


# -- the entry point --------------------------------------------------------------------------------
def recover(
    student: nn.Module,
    teacher: nn.Module | None,
    train: ArrayDataset | None,
    val: ArrayDataset | None,
    options: RecoveryOptions | None = None,
    ui: UI | None = None,
    *,
    bn_data: ArrayDataset | None = None,
) -> RecoveryResult:
    """Fine-tune (with distillation from `teacher` when given and options.distill) or, with
    no training data, recalibrate BatchNorm statistics only (on `bn_data` when given: images
    whose labels are not this model's, e.g. calibration data, so nothing is scored on them);
    see the module docstring."""
    opts = options or RecoveryOptions()
    opts.validate()
    info, device = init_distributed(opts.device)
    ui = (ui or quiet_ui()) if info.is_main else quiet_ui()
    try:
        return _recover(student, teacher, train, val, opts, ui, info, device, bn_data)
    finally:
        if info.created_group:
            dist.barrier()
            dist.destroy_process_group()


def _recover(student, teacher, train, val, opts, ui, info, device, bn_data=None) -> RecoveryResult:  # noqa: ANN001
    torch.manual_seed(opts.seed)
    student = student.to(device)
    acc = (lambda m: accuracy(m, val, device=device)) if val is not None else (lambda m: None)  # noqa: E731
    result = RecoveryResult(model=student, mode="none", accuracy_before=acc(student), accuracy_after_bn=None, accuracy_after=None, best_epoch=0, world_size=info.world_size, rank=info.rank)
    bn_data = train if train is not None else val if val is not None else bn_data
    if bn_data is not None:
        n_bn = recalibrate_bn(student, bn_data, batches=opts.bn_recalib_batches, batch_size=opts.batch_size, device=device)
        if n_bn:
            result.mode = "bn-recalibration"
            where = ("the training data" if train is not None else "the evaluation data (no --train given; labels unused)" if val is not None
                     else "the calibration images (no --train given; labels unused)")
            result.messages.append(f"BatchNorm statistics of {n_bn} layers re-estimated on {where}")
    result.accuracy_after_bn = acc(student)
    result.accuracy_after = result.accuracy_after_bn
    if train is None or opts.epochs == 0:
        if train is None:
            result.messages.append("no training data: BN recalibration only, no fine-tuning")
        _check_finite(student, bn_data, device)
        return result
    lr = opts.lr
    for retry in range(DIVERGED_RETRIES + 1):
        result = _fine_tune(student, teacher if opts.distill else None, train, val, replace(opts, lr=lr), ui, info, device, result)
        result.lr = lr
        # diverged before any epoch finished: the student is back at its starting state, so the
        # run is tried again slower (not under DDP: every rank would have to agree to restart)
        if not result.diverged or result.best_epoch > 0 or info.distributed or retry == DIVERGED_RETRIES:
            return result
        lr /= 10.0
        result.diverged = False
        result.messages.append(f"started again from the recalibrated model at --lr {lr:g}")
    return result


def _check_finite(model: nn.Module, data: ArrayDataset | None, device: torch.device) -> bool:
    if data is None:
        return True
    xb = torch.from_numpy(data.x[: min(len(data), 32)]).to(device)
    was = model.training
    model.eval()
    with torch.no_grad():
        ok = all(bool(torch.isfinite(t).all()) for t in output_tensors(model(xb)))
    model.train(was)
    return ok


def _fine_tune(student, teacher, train, val, opts, ui, info, device, result) -> RecoveryResult:  # noqa: ANN001
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    layers: list[str] = []
    projections: dict[str, nn.Module] = {}
    teacher_feats: dict[str, torch.Tensor] = {}
    handles = []
    frozen: list[nn.Parameter] = []
    if teacher is not None:
        teacher = teacher.to(device).eval()
        frozen = [p for p in teacher.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        example = x_all[: min(len(train), opts.batch_size)].to(device)
        if opts.feature_weight > 0:
            layers = list(opts.feature_layers) if opts.feature_layers is not None else auto_feature_layers(student, teacher, example)
            missing = [n for n in layers if n not in dict(student.named_modules()) or n not in dict(teacher.named_modules())]
            if missing:
                raise UsageError(f"feature layer(s) {', '.join(missing)} are not modules of both models", hint="name modules present in both, e.g. layer2,layer3")
            s_out, t_out = _probe_outputs(student, layers, example), _probe_outputs(teacher, layers, example)
            projections = {n: _fit_projection(s_out[n], t_out[n]).to(device) for n in layers}
        handles = [teacher.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: teacher_feats.__setitem__(n, o)) for n in layers]
        result.mode = "distillation"
    else:
        result.mode = "fine-tune"
    result.feature_layers = layers
    wrapper: nn.Module = _DistillStudent(student, layers, projections)
    model: nn.Module = wrapper
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(wrapper, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in wrapper.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay, nesterov=opts.momentum > 0)
    steps = math.ceil(math.ceil(len(train) / info.world_size) / opts.batch_size)
    if opts.max_steps_per_epoch is not None:
        steps = min(steps, opts.max_steps_per_epoch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(opts.epochs * steps, 1))
    best_state = copy.deepcopy(student.state_dict())
    best_acc = result.accuracy_after_bn
    # distributed runs keep every rank's plan alike: no clock-driven cuts there
    budget = StepBudget(opts.max_seconds, opts.min_steps, opts.epochs, steps) if opts.max_seconds and not info.distributed else None
    epochs = opts.epochs
    try:
        with ui.progress("recover", opts.epochs * steps) as task:
            for epoch in range(opts.epochs):
                if epoch >= epochs:
                    break
                order = epoch_order(len(train), epoch, opts.seed, info)
                seen = correct = 0
                total_loss = 0.0
                model.train()
                for step in range(steps):
                    if step >= steps_this_run(budget, steps):
                        break
                    idx = torch.tensor(order[step * opts.batch_size : (step + 1) * opts.batch_size])
                    if idx.numel() == 0:
                        break
                    xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                    outputs, feats = model(xb)
                    logits = first_output(outputs)  # a model with more outputs trains on its first (evaluate.first_output)
                    loss = F.cross_entropy(logits, yb)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = first_output(teacher(xb))
                        loss = (1 - opts.alpha) * loss + opts.alpha * kd_loss(logits, t_logits, opts.temperature)
                        for n, f in zip(layers, feats, strict=True):
                            loss = loss + opts.feature_weight / max(len(layers), 1) * feature_loss(f, teacher_feats[n])
                    if not torch.isfinite(loss):
                        result.diverged = True
                        result.messages.append(
                            f"training diverged (loss {loss.item()}) at epoch {epoch + 1}, step {step + 1}: stopped and kept "
                            f"the best state (epoch {result.best_epoch}); try a lower --lr"
                        )
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    seen += len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
                    total_loss += float(loss.detach()) * len(idx)
                    result.steps += 1
                    task.advance()
                    if budget is not None and budget.after_step(result.steps):
                        epochs = 1 if budget.stop else budget.epochs
                        sched.T_max = max(budget.total, 1)
                        task.update(total=result.steps if budget.stop else budget.total)
                        result.budget = budget.to_dict()
                    task.update(info=f"epoch {epoch + 1}/{epochs} loss {total_loss / seen:.3f} acc {100 * correct / seen:.1f}%")
                    if budget is not None and budget.stop:
                        break
                if result.diverged:
                    break
                if info.distributed:
                    sync_buffers(student)
                val_acc = accuracy(student, val, device=device) if val is not None else None
                result.history.append({"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "train_accuracy": 100.0 * correct / max(seen, 1), "val_accuracy": val_acc})
                ui.log(f"epoch {epoch + 1}: loss {total_loss / max(seen, 1):.4f}, train acc {100.0 * correct / max(seen, 1):.2f}%" + (f", val acc {val_acc:.2f}%" if val_acc is not None else ""))
                # Without validation data the latest epoch is the best we know of.
                if val_acc is None or best_acc is None or val_acc > best_acc:
                    best_acc, result.best_epoch = val_acc, epoch + 1
                    best_state = copy.deepcopy(student.state_dict())
                    if opts.checkpoint_path and info.is_main:
                        _save_checkpoint(Path(opts.checkpoint_path), student, epoch + 1, val_acc)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        wrapper.detach_hooks()
    student.load_state_dict(best_state)
    student.eval()
    if result.diverged and not _check_finite(student, val if val is not None else train, device):
        raise TrainingDivergedError("training diverged and no finite model state was kept", hint="lower --lr or check the data")
    result.model = student
    result.accuracy_after = best_acc
    if opts.checkpoint_path and info.is_main and result.best_epoch > 0:
        result.checkpoint_path = opts.checkpoint_path
    return result


def steps_this_run(budget: StepBudget | None, steps: int) -> int:
    """Steps per epoch after any cut by the time budget."""
    return steps if budget is None else min(steps, budget.steps_per_epoch)


def _save_checkpoint(path: Path, student: nn.Module, epoch: int, val_acc: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": "hadmc-recovery/1", "epoch": epoch, "val_accuracy": val_acc, "state_dict": student.state_dict()}, tmp)
