"""Recovery: KD loss math, distillation into a narrower student, BN recalibration, NaN handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recover_models import TinyNet, digits, trained_teacher

from hadmc_deploy.errors import TrainingDivergedError, UsageError
from hadmc_deploy.recover import (
    RecoveryOptions,
    accuracy,
    auto_feature_layers,
    feature_loss,
    kd_loss,
    recalibrate_bn,
    recover,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def teacher(data):
    return trained_teacher(data[0])


def test_kd_loss_matches_its_definition_and_gradient() -> None:
    torch.manual_seed(0)
    s = torch.randn(5, 7, requires_grad=True)
    t = torch.randn(5, 7)
    temp = 3.0
    p_t = F.softmax(t / temp, 1)
    p_s = F.softmax(s / temp, 1)
    manual = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * temp**2
    loss = kd_loss(s, t, temp)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    loss.backward()
    # d/ds [T^2 KL] = T (p_s - p_t) / N
    assert torch.allclose(s.grad, temp * (p_s - p_t).detach() / 5, atol=1e-6)
    assert kd_loss(t, t, temp).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_loss_is_scale_free() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert feature_loss(a, b).item() == pytest.approx(feature_loss(10 * a, 10 * b).item(), rel=1e-5)
    assert feature_loss(b, b).item() == 0.0


def test_distillation_recovers_a_damaged_narrow_student(data, teacher, tmp_path) -> None:
    train, val = data
    teacher_acc = accuracy(teacher, val)
    assert teacher_acc > 85
    torch.manual_seed(1)
    student = TinyNet(width=8)  # narrower and untrained: feature alignment needs 1x1 projections
    assert auto_feature_layers(student, teacher, torch.from_numpy(train.x[:4])) == ["stem", "block1", "block2"][-3:]
    opts = RecoveryOptions(epochs=4, lr=0.1, batch_size=64, seed=0, checkpoint_path=str(tmp_path / "best.pt"))
    result = recover(student, teacher, train, val, opts)
    assert result.mode == "distillation"
    assert result.accuracy_before < 30
    assert result.accuracy_after > 80 and result.accuracy_after == pytest.approx(accuracy(result.model, val))
    assert result.best_epoch >= 1 and len(result.history) == 4
    assert result.accuracy_after == max(h["val_accuracy"] for h in result.history)
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert saved["epoch"] == result.best_epoch
    # the student leaves without hooks: a forward pass returns plain logits
    assert result.model(torch.from_numpy(val.x[:2])).shape == (2, 10)
    # the teacher is left trainable and unchanged in mode
    assert all(p.requires_grad for p in teacher.parameters())


def test_recovery_is_deterministic(data, teacher) -> None:
    train, val = data
    train = train.subset(300)
    states = []
    for _ in range(2):
        torch.manual_seed(7)
        student = TinyNet(width=8)
        recover(student, teacher, train, val, RecoveryOptions(epochs=1, lr=0.05, batch_size=64, seed=3))
        states.append(student.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_no_distill_is_plain_fine_tuning(data, teacher) -> None:
    train, val = data
    torch.manual_seed(1)
    result = recover(TinyNet(width=8), teacher, train.subset(400), val, RecoveryOptions(epochs=1, distill=False, lr=0.05, batch_size=64))
    assert result.mode == "fine-tune" and result.feature_layers == []


def test_bn_recalibration_restores_corrupted_statistics(data, teacher) -> None:
    train, val = data
    import copy

    damaged = copy.deepcopy(teacher)
    for m in damaged.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.add_(3.0)
            m.running_var.mul_(20.0)
    before = accuracy(damaged, val)
    assert before < accuracy(teacher, val) - 20
    result = recover(damaged, None, None, val, RecoveryOptions())  # no training data: recalibration alone
    assert result.mode == "bn-recalibration"
    assert any("no training data" in m for m in result.messages)
    assert any("evaluation data" in m for m in result.messages)
    assert result.accuracy_after_bn > accuracy(teacher, val) - 5
    # the estimate is the plain average over the data
    probe = copy.deepcopy(teacher)
    assert recalibrate_bn(probe, train, batches=1000, batch_size=len(train)) == 3
    stem_out = teacher.stem[0](torch.from_numpy(train.x))
    assert torch.allclose(probe.stem[1].running_mean, stem_out.mean((0, 2, 3)), atol=1e-4)


def test_nan_loss_stops_and_keeps_best(data, teacher) -> None:
    train, val = data
    torch.manual_seed(1)
    student = TinyNet(width=8)
    calls = {"n": 0}

    def blow_up(module, inputs, output):  # noqa: ANN001, ANN202 - training steps only (BN recalibration runs without grad)
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] >= 3 + 23:  # epoch 1 (23 steps) completes, epoch 2 diverges
                return output * float("nan")
        return output

    student.fc.register_forward_hook(blow_up)
    result = recover(student, teacher, train, val, RecoveryOptions(epochs=3, lr=0.05, batch_size=64))
    assert result.diverged
    assert result.best_epoch == 1 and len(result.history) == 1
    assert any("diverged" in m and "kept the best state (epoch 1)" in m for m in result.messages)
    assert result.accuracy_after == pytest.approx(result.history[0]["val_accuracy"])


def test_nothing_good_raises(data, teacher) -> None:
    train, val = data
    student = TinyNet(width=8)
    with torch.no_grad():
        student.fc.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError):
        recover(student, teacher, train.subset(128), val, RecoveryOptions(epochs=1, batch_size=64))


def test_bad_options_and_layers(data, teacher) -> None:
    train, val = data
    with pytest.raises(UsageError):
        recover(TinyNet(8), teacher, train, val, RecoveryOptions(lr=-1))
    with pytest.raises(UsageError, match="nope"):
        recover(TinyNet(8), teacher, train.subset(64), val, RecoveryOptions(feature_layers=("nope",)))


class FakeClock:
    """A clock the test moves: each step of a StepBudget takes exactly `step` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_budget(budget, clock: FakeClock, step_seconds: float, warm_seconds: float) -> int:
    """Steps a loop takes under `budget` (the first step `warm_seconds`, the rest `step_seconds`)."""
    done = 0
    while done < budget.total and not budget.stop:
        clock.now += warm_seconds if done == 0 else step_seconds
        done += 1
        budget.after_step(done)
    return done


def test_step_budget_cuts_to_whole_epochs_from_measured_steps_not_the_warm_one() -> None:
    from hadmc_deploy.recover import StepBudget

    clock = FakeClock()
    budget = StepBudget(20.0, 10, epochs=13, steps_per_epoch=8, clock=clock)
    # a slow first step (allocator warm-up) is not a step's time: 1 s steps after a 5 s first one.
    # After 3 steps (7 s) 13 more fit: 16 steps, two whole epochs of 8 (timing the first step too
    # would have measured 2.3 s and cut to one epoch)
    assert run_budget(budget, clock, step_seconds=1.0, warm_seconds=5.0) == 16
    assert (budget.epochs, budget.steps_per_epoch, budget.step_seconds, budget.stop) == (2, 8, 1.0, False)


def test_step_budget_leaves_a_plan_that_fits_and_stops_one_that_cannot_reach_min_steps() -> None:
    from hadmc_deploy.recover import StepBudget

    clock = FakeClock()
    fits = StepBudget(20.0, 10, epochs=4, steps_per_epoch=5, clock=clock)
    assert run_budget(fits, clock, step_seconds=0.5, warm_seconds=0.5) == 20
    assert (fits.epochs, fits.steps_per_epoch, fits.stop) == (4, 5, False)
    clock = FakeClock()
    hopeless = StepBudget(20.0, 10, epochs=4, steps_per_epoch=5, clock=clock)
    assert run_budget(hopeless, clock, step_seconds=4.0, warm_seconds=4.0) == 3  # 3 steps, then 2 more fit: 5 < 10
    assert hopeless.stop and hopeless.to_dict()["stopped"]
    clock = FakeClock()
    within_one_epoch = StepBudget(20.0, 4, epochs=3, steps_per_epoch=50, clock=clock)
    run_budget(within_one_epoch, clock, step_seconds=1.0, warm_seconds=1.0)
    assert (within_one_epoch.epochs, within_one_epoch.steps_per_epoch) == (1, 20)


def test_recover_with_a_budget_too_small_stops_early_and_keeps_the_starting_point(data, teacher) -> None:
    """A real training run under a budget no step fits: three steps (one warm, two timed), then the
    starting point wins unless those steps helped; the result records what was measured."""
    train, val = data
    student = TinyNet(width=8)
    result = recover(student, teacher, train.subset(640), val, RecoveryOptions(epochs=3, lr=0.05, batch_size=64, seed=0, max_seconds=1e-6, min_steps=10))
    assert result.steps == 3
    assert result.budget is not None and result.budget["stopped"] and result.budget["step_seconds"] > 0
    assert len(result.history) == 1  # the partial epoch was validated, no more
    assert result.accuracy_after >= result.accuracy_after_bn
    unbounded = recover(TinyNet(width=8), teacher, train.subset(640), val, RecoveryOptions(epochs=1, lr=0.05, batch_size=64, seed=0, max_seconds=3600.0))
    assert unbounded.steps == 10 and unbounded.budget is None


class TwoOutputs(torch.nn.Module):
    """A classifier that also returns an embedding: (logits, features), as models for retrieval do."""

    def __init__(self, net: TinyNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        feats = torch.flatten(n.pool(n.block2(n.block1(n.stem(x)))), 1)
        return n.fc(feats), feats


def test_a_model_with_two_outputs_is_scored_and_distilled_on_its_first(data, teacher) -> None:
    """It crashed in the finiteness check (torch.isfinite of a tuple) before any training; the
    classifier's scores are the first output, as every ONNX-side accuracy reads them."""
    train, val = data
    wrapped_teacher = TwoOutputs(teacher)
    assert accuracy(wrapped_teacher, val) == pytest.approx(accuracy(teacher, val))
    opts = RecoveryOptions(epochs=2, lr=0.05, batch_size=64, seed=0)
    torch.manual_seed(0)
    two = recover(TwoOutputs(TinyNet(width=8)), wrapped_teacher, train.subset(640), val, opts)
    torch.manual_seed(0)
    one = recover(TinyNet(width=8), teacher, train.subset(640), val, opts)
    assert two.mode == "distillation" and two.steps == one.steps == 20
    # the same computation as the single-output model's: it trained on the first output
    assert [h["val_accuracy"] for h in two.history] == pytest.approx([h["val_accuracy"] for h in one.history])
    assert two.accuracy_after > two.accuracy_before


def test_divergence_before_the_first_epoch_starts_again_slower(data, teacher) -> None:
    """A loss that turns NaN in the first epoch restarts the run from the recalibrated model at a
    tenth of the rate, which is recorded; the run kept is the slower one, with a finished epoch."""
    train, val = data
    torch.manual_seed(1)
    student = TinyNet(width=8)
    calls = {"n": 0}

    def blow_up_once(module, inputs, output):  # noqa: ANN001, ANN202
        if module.training and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:  # the third training step of the first run only
                return output * float("nan")
        return output

    student.fc.register_forward_hook(blow_up_once)
    result = recover(student, teacher, train.subset(400), val, RecoveryOptions(epochs=1, lr=0.05, batch_size=64))
    assert not result.diverged and result.best_epoch == 1 and len(result.history) == 1
    assert result.lr == pytest.approx(0.005)
    assert any("diverged" in m for m in result.messages)
    assert any("started again from the recalibrated model at --lr 0.005" in m for m in result.messages)


def test_feature_projection_fit_stays_bounded_on_collinear_features() -> None:
    """Nearly collinear student channels (a pruned concat's) made the plain least-squares projection's
    weights huge and distillation diverge; the ridge keeps them small and the fit close."""
    from hadmc_deploy.recover import _fit_projection

    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, 6, 6, generator=g)
    s = torch.cat([base, base[:, :2] + 1e-5 * torch.randn(64, 2, 6, 6, generator=g)], dim=1)  # 6 channels, 2 near-copies
    t = torch.cat([base, base[:, :1] - base[:, 1:2], torch.randn(64, 3, 6, 6, generator=g)], dim=1)  # 8 channels
    proj = _fit_projection(s, t)
    assert float(proj.weight.abs().max()) < 5.0
    with torch.no_grad():
        explained = t[:, :5]  # what the student's channels can express
        resid = (proj(s)[:, :5] - explained).pow(2).mean() / explained.pow(2).mean()
    assert float(resid) < 0.01
