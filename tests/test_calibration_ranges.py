"""Range collection in ONNX Runtime, scales.json save/load and reuse, and bad calibration input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from calibration_models import tiny_digits_onnx
from onnx import TensorProto, helper

from hadmc_deploy.calibration.collect import MIN_CALIBRATION_SAMPLES, collect_ranges, load_or_collect
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.errors import DataError


def _dataset(x: np.ndarray) -> ArrayDataset:
    return ArrayDataset(x.astype(np.float32), np.zeros(len(x), np.int64), "test-data")


def _log_model(path):
    """input -> Relu(-x)... -> Log: Log of a zero gives -inf, so the tensor 'log_out' goes non-finite."""
    nodes = [helper.make_node("Neg", ["input"], ["neg_out"]), helper.make_node("Relu", ["neg_out"], ["relu_out"]),
             helper.make_node("Log", ["relu_out"], ["log_out"]), helper.make_node("ReduceMean", ["log_out"], ["output"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_collect_ranges_covers_every_activation_and_matches_minmax():
    path, train, _ = tiny_digits_onnx()
    ranges = collect_ranges(path, train, method="minmax", num_samples=64)
    model = onnx.load(str(path))
    assert "input" in ranges and ranges.num_samples == 64
    for node in model.graph.node:
        assert node.output[0] in ranges, node.output[0]
    subset = train.subset(64)
    assert ranges.tensors["input"].min == pytest.approx(subset.x.min())
    assert ranges.amax("input") == pytest.approx(np.abs(subset.x).max())
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    assert ranges.tensors[relu].min == 0.0
    entropy = collect_ranges(path, train, method="entropy", num_samples=64)
    assert all(entropy.amax(n) <= ranges.amax(n) + 1e-6 for n in ranges.tensors)


def test_save_load_roundtrip_and_reuse(tmp_path):
    path, train, _ = tiny_digits_onnx()
    cache = tmp_path / "scales.json"
    first, reused = load_or_collect(path, train, "percentile", cache, num_samples=32)
    assert not reused and cache.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["scales.json"]  # atomic write left no temp file
    loaded = ActivationRanges.load(cache)
    assert loaded.tensors == first.tensors and loaded.model_sha256 == first.model_sha256
    assert loaded.percentile == 99.99 and loaded.versions["onnxruntime"]
    second, reused = load_or_collect(path, train, "percentile", cache, num_samples=32)
    assert reused and second.tensors == first.tensors
    _, reused = load_or_collect(path, train, "minmax", cache, num_samples=32)  # other method: recollect
    assert not reused and ActivationRanges.load(cache).method == "minmax"
    other = _dataset(train.x[:40] * 2.0)
    _, reused = load_or_collect(path, other, "minmax", cache, num_samples=32)  # other data: recollect
    assert not reused


def test_auto_picks_per_tensor_on_held_out_samples_and_is_keyed_on_form(tmp_path):
    path, train, _ = tiny_digits_onnx()
    cache = tmp_path / "scales.json"
    auto, reused = load_or_collect(path, train, "auto", cache, num_samples=128, form="qdq_u8s8")
    assert not reused and auto.form == "qdq_u8s8" and auto.num_samples == 128
    assert set(auto.method_counts()) <= {"entropy", "percentile", "minmax"} and sum(auto.method_counts().values()) == len(auto)
    # Each tensor's range is one of the three candidates computed on the 96 non-held-out samples.
    fit = _dataset(train.subset(128).x[:96])
    by_method = {m: collect_ranges(path, fit, method=m, num_samples=96) for m in ("entropy", "percentile", "minmax")}
    for name, rng in auto.tensors.items():
        assert rng.amax == pytest.approx(by_method[rng.method].amax(name), rel=1e-6), name
    assert ActivationRanges.load(cache).tensors == auto.tensors  # the chosen method survives scales.json
    _, reused = load_or_collect(path, train, "auto", cache, num_samples=128, form="qdq_u8s8")
    assert reused
    _, reused = load_or_collect(path, train, "auto", cache, num_samples=128, form="qdq_s8s8")  # chosen for another form
    assert not reused


def test_corrupt_scales_file_is_a_data_error(tmp_path):
    bad = tmp_path / "scales.json"
    bad.write_text(json.dumps({"format": "hadmc-scales/1", "tensors": {"x": {"amax": 1.0}}}))
    with pytest.raises(DataError, match="incomplete or corrupt"):
        ActivationRanges.load(bad)


def test_wrong_shape_names_both_shapes():
    path, _, _ = tiny_digits_onnx()
    with pytest.raises(DataError, match=r"shape 1x28x28 but the model takes 1x8x8"):
        collect_ranges(path, _dataset(np.zeros((32, 1, 28, 28))), num_samples=32)


def test_too_few_samples_says_how_many(tmp_path):
    path, _, _ = tiny_digits_onnx()
    with pytest.raises(DataError, match=f"at least {MIN_CALIBRATION_SAMPLES}") as err:
        collect_ranges(path, _dataset(np.zeros((5, 1, 8, 8))), num_samples=512)
    assert "has only 5 samples" in err.value.one_line()


def test_nan_in_activation_names_the_tensor(tmp_path):
    path = _log_model(tmp_path / "log.onnx")
    x = np.ones((20, 1, 4, 4), np.float32)  # Relu(-1) = 0 -> Log(0) = -inf
    with pytest.raises(DataError, match="tensor 'log_out' holds NaN/Inf on calibration sample 0"):
        collect_ranges(path, _dataset(x), method="minmax", num_samples=20)
