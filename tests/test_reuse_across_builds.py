"""Work on the same model reused across builds (hadmc_deploy/build/reuse.py): a second build of a
trained digits CNN into another --out takes the original's export, its activation ranges, its
INT8 graph and check and its artifacts' --eval accuracy from the first, and ends with the same
baseline files; the keys see a
changed weight or module setting; the calibration passes take the same images whichever number
of images a build loaded."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_models import DIGITS_TEST, DIGITS_TRAIN, TINY_ARCH, train_tiny

from hadmc_deploy.build import reuse
from hadmc_deploy.calibration.quantize import heldout_samples
from hadmc_deploy.cli import main
from hadmc_deploy.data import Preprocess, load_data
from hadmc_deploy.export import ExportResult, export_onnx


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("reuse") / "tiny.pth", epochs=2)


def _build(tiny: Path, out: Path, *extra: str) -> tuple[int, dict]:
    rc = main(["build", str(tiny), "--arch", TINY_ARCH, "--target", "cpu", "--precision", "int8", "--calib", DIGITS_TRAIN,
               "--calib-samples", "256", "--eval", DIGITS_TEST, "--no-measure-lut", "--batch", "1", "--runs", "3", "--warmup", "1", "-q", "--out", str(out), *extra])
    return rc, json.loads((out / "report.json").read_text())


def _stage(report: dict, name: str) -> str:
    return next(s for s in report["stages"] if s["name"] == name)["detail"]


def _entries(cache: Path, kind: str) -> list[Path]:
    return sorted((cache / "reuse" / kind).glob("*"))


def test_a_second_build_reuses_the_original_s_export_ranges_and_held_out_outputs(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HADMC_CACHE", str(cache))
    rc1, first = _build(tiny, tmp_path / "first")
    stored = {kind: _entries(cache, kind) for kind in ("export", "ranges", "quantized", "score")}
    assert rc1 in (0, 15) and all(stored.values()), stored
    assert "earlier build" not in _stage(first, "export") and "earlier build" not in _stage(first, "calibrate")

    rc2, second = _build(tiny, tmp_path / "second")
    assert rc2 == rc1
    assert "the original's export from an earlier build" in _stage(second, "export")
    assert "baseline: from an earlier build" in _stage(second, "calibrate")
    assert "(baseline: from an earlier build)" in _stage(second, "quantize")
    # nothing computed again, so nothing new stored, but the scores of variants chosen by timing (a
    # mixed INT8/FP32 graph keeps in float the layers this run timed slower in INT8, and its session
    # may leave off an optimizer that timed slower)
    again = {kind: _entries(cache, kind) for kind in stored}
    timed = [v for v in second["variants"] if v["name"] not in ("baseline-fp32", "baseline-int8")]
    assert {k: v for k, v in again.items() if k != "score"} == {k: v for k, v in stored.items() if k != "score"}
    assert set(stored["score"]) <= set(again["score"]) and len(again["score"]) - len(stored["score"]) <= len(timed)
    for name in ("baseline.onnx", "baseline_scales.json"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    assert first["quantization"]["baseline"]["check"] == second["quantization"]["baseline"]["check"]
    accuracy = [{v["name"]: v["accuracy"] for v in report["variants"] if v["name"] in ("baseline-fp32", "baseline-int8")} for report in (first, second)]
    assert accuracy[0] == accuracy[1] and len(accuracy[0]) == 2 and None not in accuracy[0].values()

    _build(tiny, tmp_path / "uncached", "--no-cache")  # --no-cache reuses and stores nothing
    assert {kind: _entries(cache, kind) for kind in stored} == again
    assert "earlier build" not in _stage(json.loads((tmp_path / "uncached" / "report.json").read_text()), "export")


def test_the_export_key_sees_weights_settings_and_shape() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.zeros(1, 1, 8, 8))
    key = reuse.model_key(model, (1, 1, 8, 8), 18)
    assert reuse.model_key(model, (4, 1, 8, 8), 18) == key  # the batch is dynamic in the export
    assert reuse.model_key(model, (1, 1, 9, 9), 18) != key and reuse.model_key(model, (1, 1, 8, 8), 17) != key
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert reuse.model_key(model, (1, 1, 8, 8), 18) != key
    changed = reuse.model_key(model, (1, 1, 8, 8), 18)
    model[1].inplace = True  # a module setting, no weight
    assert reuse.model_key(model, (1, 1, 8, 8), 18) != changed


class _Scaled(torch.nn.Module):
    """A module whose forward reads a plain attribute that its repr does not show."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale


class _Noted(_Scaled):
    """A module with extra state (torch's `get_extra_state`), which its state_dict holds as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.note = "first"

    def get_extra_state(self) -> dict:
        return {"note": self.note}

    def set_extra_state(self, state: dict) -> None:
        self.note = state["note"]


def test_the_export_key_sees_a_plain_attribute_and_state_that_is_not_a_tensor() -> None:
    model = _Scaled()
    key = reuse.model_key(model, (1, 1, 8, 8), 18)
    model.scale = 2.0
    assert reuse.model_key(model, (1, 1, 8, 8), 18) != key
    noted = _Noted()
    assert "_extra_state" in noted.state_dict()  # torch's extra state: in the state_dict, not a tensor
    key = reuse.model_key(noted, (1, 1, 8, 8), 18)
    noted.note = "another"
    assert reuse.model_key(noted, (1, 1, 8, 8), 18) != key


def test_a_stored_export_that_disagrees_with_the_model_is_replaced(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the key cannot see (code outside the model's class files) the export stage's check on
    real images does: a stored export of other weights is not shipped, the model is exported
    again and the entry replaced."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("HADMC_CACHE", str(cache))
    _build(tiny, tmp_path / "first")
    (entry,) = _entries(cache, "export")
    stored, record = entry / "baseline.onnx", json.loads((entry / reuse.ENTRY_FILE).read_text())
    other = train_tiny(tmp_path / "other.pth", epochs=1, seed=1)
    rc, _ = _build(other, tmp_path / "other")
    assert rc in (0, 15)
    stored.write_bytes((tmp_path / "other" / "baseline.onnx").read_bytes())  # the entry now holds another model's graph
    record["files"]["baseline.onnx"] = hashlib.sha256(stored.read_bytes()).hexdigest()
    (entry / reuse.ENTRY_FILE).write_text(json.dumps(record))

    rc2, second = _build(tiny, tmp_path / "second")
    assert rc2 in (0, 15) and "earlier build" not in _stage(second, "export")
    assert (tmp_path / "second" / "baseline.onnx").read_bytes() != (tmp_path / "other" / "baseline.onnx").read_bytes()
    assert stored.read_bytes() == (tmp_path / "second" / "baseline.onnx").read_bytes()  # replaced


def test_export_result_round_trips_through_its_dict(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    result = export_onnx(model, (1, 1, 6, 6), tmp_path / "m.onnx", exporters=("legacy",))
    assert ExportResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_a_stored_file_is_made_once_and_a_damaged_entry_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HADMC_CACHE", str(tmp_path))
    calls = []

    def make(path: Path) -> None:
        calls.append(path)
        path.write_text('{"ranges": 1}')

    def read(path: Path) -> dict:
        return json.loads(path.read_text())

    assert reuse.reused("ranges", "a" * 64, make, read, ".json") == ({"ranges": 1}, False)
    assert reuse.reused("ranges", "a" * 64, make, read, ".json") == ({"ranges": 1}, True) and len(calls) == 1
    next((tmp_path / "reuse" / "ranges").glob("*")).write_text('{"ran')  # damaged: made again
    assert reuse.reused("ranges", "a" * 64, make, read, ".json") == ({"ranges": 1}, False) and len(calls) == 2

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"graph")
    reuse.store_files("export", "b" * 64, [onnx_file], {"sha256": "of the graph"})
    files, record = reuse.stored_files("export", "b" * 64)
    assert files["m.onnx"].read_bytes() == b"graph" and record == {"sha256": "of the graph"}
    files["m.onnx"].write_bytes(b"grap")  # truncated
    assert reuse.stored_files("export", "b" * 64) is None


def test_the_least_recently_used_entries_go_beyond_the_count_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HADMC_CACHE", str(tmp_path))
    monkeypatch.setitem(reuse.KEEP, "heldout", 2)

    def stored(key: str) -> Path:
        return reuse.reused("heldout", key * 64, lambda p: p.write_bytes(b"x"), lambda p: p, ".npz")[0]

    for n, key in enumerate("abc"):
        os.utime(stored(key), (1000 + n, 1000 + n))  # made in this order
    stored("a")  # used again: now the most recent
    stored("d")
    assert [p.name[0] for p in _entries(tmp_path, "heldout")] == ["a", "d"]


def test_the_calibration_passes_take_the_same_images_whichever_number_was_loaded() -> None:
    """A build loads as many calibration images as its passes reach, a number that follows the
    pruned model's cost; the ranges' images and the INT8 check's held-out ones are the first of
    the source's own fixed shuffle, the same in every build."""
    pre = Preprocess(channels=1)
    few, more, every = (load_data(DIGITS_TRAIN, pre, limit=n) for n in (500, 800, None))
    assert len(few) == 500 and len(more) == 800
    for data in (more, every):
        assert np.array_equal(few.subset(128).x, data.subset(128).x)
        assert np.array_equal(heldout_samples(few, 128, 300)[0], heldout_samples(data, 128, 300)[0])
    # loaded in full, the shuffle is the seeded permutation a subset always took
    order = np.sort(np.random.default_rng(0).permutation(len(every))[:128])
    assert np.array_equal(every.subset(128).x, every.x[order])
