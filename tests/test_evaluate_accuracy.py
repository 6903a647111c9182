"""The one top-1 accuracy (torch, ONNX, logits) and the chance-level warning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.evaluate import chance_level_warning, onnx_accuracy, top1_accuracy, torch_accuracy
from hadmc_deploy.export import export_onnx
from hadmc_deploy.recover import accuracy as recover_accuracy
from hadmc_deploy.train import evaluate_accuracy


class _Fixed(nn.Module):
    """Returns preset logits row by row (so NaN rows can be planted)."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.from_numpy(logits)
        self.lin = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()]


def test_nan_rows_count_as_wrong_everywhere():
    logits = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    logits[1, :] = np.nan  # argmax of a NaN row is 0 in numpy and torch: it must not count
    logits[3, 3] = np.nan
    labels = np.array([0, 0, 2, 3])
    assert top1_accuracy(logits, labels) == pytest.approx(50.0)
    data = ArrayDataset(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1), labels, "planted")
    model = _Fixed(logits).train()
    for measure in (torch_accuracy, evaluate_accuracy, recover_accuracy):
        assert measure(model, data) == pytest.approx(50.0)
        assert model.training  # the caller's mode is restored


def test_onnx_accuracy_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = np.random.default_rng(0).standard_normal((50, 1, 4, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 50)
    data = ArrayDataset(x, y, "random")
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 1, 4, 4), path)
    assert onnx_accuracy(path, data) == pytest.approx(torch_accuracy(model, data))


def test_chance_level_is_flagged_with_the_likely_cause():
    warning = chance_level_warning(10.8, 10)
    assert warning is not None and "--mean/--std" in warning and "10.0%" in warning
    assert chance_level_warning(52.0, 2) is not None  # a coin flip on two classes
    assert chance_level_warning(91.0, 10) is None
    assert chance_level_warning(30.0, 10) is None
    assert chance_level_warning(5.0, 1) is None  # one class: no chance level to speak of


class _Stats:  # what benchmark_artifact reads of a backend's LatencyStats
    def __init__(self, ms: float, runs: int) -> None:
        self.p50_ms, self.runs = ms, runs

    def to_dict(self) -> dict:
        return {"p50_ms": self.p50_ms, "runs": self.runs}


class _Art:
    metadata: dict = {}


def test_slow_runs_are_timed_fewer_times_but_never_fewer_than_the_minimum():
    from hadmc_deploy.evaluate import MIN_TIMED_RUNS, benchmark_artifact

    class FakeBackend:  # records what it was asked to time; each run "takes" ms_by_batch[batch]
        def __init__(self, ms_by_batch: dict[int, float]) -> None:
            self.ms_by_batch, self.calls = ms_by_batch, []

        def benchmark(self, artifact, batch: int, warmup: int, runs: int):  # noqa: ANN001
            self.calls.append((batch, warmup, runs))
            return _Stats(self.ms_by_batch[batch], runs)

    backend = FakeBackend({1: 5.0, 32: 800.0})
    out = benchmark_artifact(backend, _Art(), (1, 32), warmup=10, runs=50)
    assert out.per_batch[1]["runs"] == 50  # a fast model gets every run asked for
    assert out.per_batch[32]["runs"] == MIN_TIMED_RUNS  # 0.8 s a run: the minimum, no extra warm-up
    assert backend.calls[-1] == (32, 0, MIN_TIMED_RUNS)


def test_batches_other_than_the_primary_are_timed_for_less_time():
    """The decide stage re-times the primary batch side by side; the others get SECONDARY_TIMED_SECONDS."""
    from hadmc_deploy.evaluate import MAX_TIMED_SECONDS, SECONDARY_TIMED_SECONDS, benchmark_artifact

    class FakeBackend:
        def benchmark(self, artifact, batch: int, warmup: int, runs: int):  # noqa: ANN001
            return _Stats(20.0, runs)  # 20 ms a run at every batch

    primary = benchmark_artifact(FakeBackend(), _Art(), (8,), warmup=10, runs=50)  # the default cap
    others = benchmark_artifact(FakeBackend(), _Art(), (1, 32), warmup=10, runs=50, max_seconds=SECONDARY_TIMED_SECONDS)  # as the evaluate stage asks
    assert primary.per_batch[8]["runs"] == int(MAX_TIMED_SECONDS / 0.020) == 25
    assert others.per_batch[1]["runs"] == others.per_batch[32]["runs"] == int(SECONDARY_TIMED_SECONDS / 0.020) == 12
    same = benchmark_artifact(FakeBackend(), _Art(), (1, 8, 32), warmup=10, runs=50)  # one cap for all
    assert {s["runs"] for s in same.per_batch.values()} == {25}


def test_labels_numbered_unlike_the_models_classes_are_named():
    """A classifier right on 80% of its images whose data numbers three classes differently (class
    folders sorted by name): 30% as labelled, 80% renumbered; the warning names the renumbering.
    Labels numbered as the model's, or a model at chance, raise nothing."""
    import numpy as np

    from hadmc_deploy.evaluate import label_order_warning

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 1000)
    predicted = np.where(rng.random(1000) < 0.8, truth, rng.integers(0, 5, 1000))
    relabel = np.array([3, 1, 0, 4, 2])  # the data's label of each model class: classes 0, 2, 3, 4 move
    as_numbered = np.zeros((5, 5), np.int64)
    np.add.at(as_numbered, (truth, predicted), 1)
    moved = np.zeros((5, 5), np.int64)
    np.add.at(moved, (relabel[truth], predicted), 1)
    warning = label_order_warning(moved)
    assert warning is not None and "label 3 -> class 0" in warning and "4 of its labels were renumbered" in warning
    assert label_order_warning(as_numbered) is None
    chance = np.zeros((5, 5), np.int64)
    np.add.at(chance, (truth, rng.integers(0, 5, 1000)), 1)
    assert label_order_warning(chance) is None


def test_a_build_warns_when_the_eval_labels_are_numbered_unlike_the_model(tmp_path):
    """A trained digits CNN built with --eval digits whose labels 0-4 are rotated (half the images'
    labels renumbered): the decision carries the renumbering warning (report.json and report.md)."""
    import json

    from pipeline_models import DIGITS_TEST, TINY_ARCH, train_tiny

    from hadmc_deploy.cli import main
    from hadmc_deploy.data import load_data

    model = train_tiny(tmp_path / "tiny.pth", epochs=3)
    test = load_data(DIGITS_TEST)
    swapped = np.where(test.y < 5, (test.y + 1) % 5, test.y)
    raw = np.clip(np.round((test.x * 0.5 + 0.5) * 255), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "eval.npz", x=raw, y=swapped)
    rc = main(["build", str(model), "--arch", TINY_ARCH, "--target", "cpu", "--precision", "fp32", "--eval", str(tmp_path / "eval.npz"),
               "--batch", "1", "--runs", "3", "--warmup", "1", "-q", "--out", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0 and any("label 1 -> class 0" in w for w in report["decision"]["warnings"])
    assert "renumbered" in (tmp_path / "out" / "report.md").read_text()
