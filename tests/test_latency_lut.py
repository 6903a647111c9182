"""LUT file: schema round-trip, corrupt/empty files, device-mismatch refusal and --force."""

from __future__ import annotations

import json

import pytest

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.latency import AnalyticLatencyModel, LutLatencyModel, load_latency_model
from hadmc_deploy.latency.lut import Correction, LatencyTable, LutMeta, read_table
from hadmc_deploy.latency.measure import backend_identity, get_backend
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import get_target
from hadmc_deploy.ui import UI


def _table(device: dict | None = None, target: str = "cpu", version: str | None = None) -> LatencyTable:
    backend = get_backend("onnxruntime")
    real_version, real_device = backend_identity(backend)
    meta = LutMeta(
        target=target,
        backend="onnxruntime",
        backend_version=version or real_version,
        device=device if device is not None else real_device,
        threads=2,
        batch=1,
        precision="fp32",
        alignment=8,
    )
    table = LatencyTable(meta=meta)
    spec = LayerSpec("conv", 16, 32, (3, 3), (1, 1), (1, 1), in_hw=(8, 8), out_hw=(8, 8), activation="relu")
    table.add(spec, 0.25, 0.3, 30, min_ms=0.2)
    table.add(spec.with_channels(24, 32), 0.3, 0.35, 30)
    return table


def test_schema_round_trip(tmp_path):
    table = _table()
    table.correction = Correction(1.1, 0.05, [{"plan": "full", "measured_ms": 1.0}])
    path = tmp_path / "lut.json"
    table.save(path)
    loaded = read_table(path)
    assert loaded.to_dict() == table.to_dict()
    data = json.loads(path.read_text())
    assert data["schema_version"] == 2 and data["format"] == "hadmc-latency-lut"
    for key in ("target", "backend", "backend_version", "device", "threads", "batch", "precision", "method", "created"):
        assert key in data["meta"]
    entries = list(data["entries"].values())
    assert set(entries[0]) >= {"spec", "median_ms", "p90_ms", "runs"}
    assert any(e.get("min_ms") == 0.2 for e in entries)


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ('{"format": "something-else"}', "not a hadmc-deploy latency table"),
        ('{"format": "hadmc-latency-lut", "schema_version": 99}', "schema version 99"),
        ('{"format": "hadmc-latency-lut", "schema_version": 1, "meta": {"target": "cpu"}}', "corrupt"),
    ],
)
def test_corrupt_or_empty_file_is_a_clear_error(tmp_path, content, words):
    path = tmp_path / "lut.json"
    path.write_text(content)
    with pytest.raises(LatencyModelError, match=words):
        read_table(path)


def test_corrupt_entry_is_a_clear_error(tmp_path):
    path = tmp_path / "lut.json"
    data = _table().to_dict()
    key = next(iter(data["entries"]))
    data["entries"][key]["median_ms"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(LatencyModelError, match="corrupt"):
        read_table(path)


def test_missing_file(tmp_path):
    with pytest.raises(LatencyModelError, match="does not exist"):
        load_latency_model(get_target("cpu"), tmp_path / "nope.json")


def test_matching_table_loads_as_lut_model(tmp_path):
    path = tmp_path / "lut.json"
    _table().save(path)
    model = load_latency_model(get_target("cpu"), path)
    assert isinstance(model, LutLatencyModel)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"device": {"kind": "cpu", "name": "Some Other CPU", "isa": "avx2"}}, "device"),
        ({"target": "t4-lab"}, "target"),
        ({"version": "onnxruntime 0.0.1"}, "version"),
    ],
)
def test_mismatch_refused_and_forced_with_warning(tmp_path, capsys, change, words):
    path = tmp_path / "lut.json"
    _table(**change).save(path)
    target = get_target("cpu")
    with pytest.raises(LatencyModelError, match=words) as info:
        load_latency_model(target, path)
    assert "--force" in info.value.one_line()
    model = load_latency_model(target, path, force=True, ui=UI(quiet=True))
    assert isinstance(model, LutLatencyModel)
    assert "--force" in capsys.readouterr().err


def test_no_table_means_analytic(tmp_path):
    model = load_latency_model(get_target("cpu"))
    assert isinstance(model, AnalyticLatencyModel)
    pred = model.predict([LayerSpec("conv", 16, 16, (3, 3), in_hw=(8, 8), out_hw=(8, 8))])
    assert pred.source == "analytic"
