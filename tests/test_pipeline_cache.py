"""The stage cache: keys over inputs, output files verified by hash, and why a stage reruns."""

from __future__ import annotations

from pathlib import Path

import torch

from hadmc_deploy.cache import StageCache, tensor_hashes


def test_hit_miss_and_tampered_output(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"graph v1")
    inputs = {"opset": 18, "upstream": {"load": "abc"}}
    key = cache.key("export", inputs)
    cache.record("export", key, inputs, [out], {"n": 1}, 0.5)
    hit = cache.lookup("export", key)
    assert hit is not None and hit.result == {"n": 1} and hit.outputs == {"model.onnx": hit.outputs["model.onnx"]}
    assert cache.lookup("export", cache.key("export", {**inputs, "opset": 17})) is None
    assert cache.changed_inputs("export", {**inputs, "opset": 17}) == ["opset"]
    out.write_bytes(b"graph v2 edited by hand")  # an output changed on disk: never trusted
    assert cache.lookup("export", key) is None
    assert StageCache(tmp_path, enabled=False).lookup("export", key) is None


def test_tensor_hashes_see_one_changed_value() -> None:
    a = {"w": torch.zeros(3, 3), "b": torch.ones(3)}
    b = {"w": torch.zeros(3, 3).clone(), "b": torch.ones(3)}
    b["w"][1, 1] = 1e-7
    ha, hb = tensor_hashes(a), tensor_hashes(b)
    assert ha["b"] == hb["b"] and ha["w"] != hb["w"]
    assert tensor_hashes({"w": torch.zeros(9)})["w"] != ha["w"]  # same bytes, other shape
