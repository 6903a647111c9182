"""Triton model repository layout and config.pbtxt content, parsed back field by field."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
from tensorrt_models import tiny_cnn

from hadmc_deploy.backends.base import Artifact
from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.triton import write_triton_repo

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))')


def parse_pbtxt(text: str) -> dict:
    """A small protobuf text-format reader (messages, lists, scalars): enough to read config.pbtxt back.

    Repeated fields collect into lists; `field: [a, b]` and `field [ {..}, {..} ]` both give lists.
    """
    tokens = [m.group(2) or m.group(3) or m.group(4) for m in _TOKEN.finditer(text) if not m.group(1)]
    tokens = [t for t in tokens if t is not None]
    pos = 0

    def scalar(tok: str):
        if tok.startswith('"'):
            return tok[1:-1]
        try:
            return int(tok)
        except ValueError:
            return tok

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return message("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        return scalar(tok)

    def message(end):
        nonlocal pos
        out: dict = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            val = value()
            if key in out:
                prev = out[key] if isinstance(out[key], list) else [out[key]]
                out[key] = prev + (val if isinstance(val, list) else [val])
            else:
                out[key] = val
        pos += 1
        return out

    return message(None)


def _trt_artifact(tmp_path, profile_max=32, fixed_batch=None):
    """An engine artifact's metadata as the backend writes it (the engine bytes are a placeholder)."""
    path = tmp_path / "engine"
    path.mkdir()
    (path / "model.engine").write_bytes(b"engine bytes")
    lead = fixed_batch or -1
    lo, opt, hi = (fixed_batch,) * 3 if fixed_batch else (1, 8, profile_max)
    meta = {
        "backend": "tensorrt",
        "inputs": [{"name": "input", "dtype": "FLOAT", "shape": [lead, 1, 28, 28]}],
        "outputs": [{"name": "output", "dtype": "FLOAT", "shape": [lead, 10]}],
        "profile": {"input": {"min": [lo, 1, 28, 28], "opt": [opt, 1, 28, 28], "max": [hi, 1, 28, 28]}},
    }
    artifact = Artifact(path, "model.engine", meta)
    artifact.save_metadata()
    return Artifact.load(path)


def test_tensorrt_repo_layout_and_config(tmp_path):
    model_dir = write_triton_repo(tmp_path / "repo", _trt_artifact(tmp_path), "demo", preferred_batch_sizes=[1, 8, 32])
    assert model_dir == tmp_path / "repo" / "demo"
    assert (model_dir / "1" / "model.plan").read_bytes() == b"engine bytes"
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config["name"] == "demo" and config["platform"] == "tensorrt_plan"
    assert config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [10]}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [8, 32]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]


def test_onnxruntime_repo_is_loadable_by_onnxruntime(tmp_path):
    art_dir = tmp_path / "cpu"
    art_dir.mkdir()
    tiny_cnn(art_dir / "model.onnx", channels=3, hw=16, classes=5)
    Artifact(art_dir, "model.onnx", {"backend": "onnxruntime"}).save_metadata()
    model_dir = write_triton_repo(tmp_path / "repo", Artifact.load(art_dir), "demo_cpu")
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config["platform"] == "onnxruntime_onnx" and config["max_batch_size"] == 32
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 16, 16]}]
    assert config["output"][0]["dims"] == [5]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    # the copied model is the real one: ONNX Runtime runs it at Triton's max batch
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((32, 3, 16, 16), np.float32)})[0]
    assert out.shape == (32, 5)


def test_fixed_batch_onnx_gets_max_batch_size_zero_with_full_dims(tmp_path):
    art_dir = tmp_path / "cpu"
    art_dir.mkdir()
    tiny_cnn(art_dir / "model.onnx", batch=1)
    Artifact(art_dir, "model.onnx", {"backend": "onnxruntime"}).save_metadata()
    config = parse_pbtxt((write_triton_repo(tmp_path / "repo", Artifact.load(art_dir), "m") / "config.pbtxt").read_text())
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [1, 1, 8, 8]


def test_fixed_batch_engine_gets_max_batch_size_zero_with_full_dims(tmp_path):
    """An engine whose batch is fixed at 4 (profile 4/4/4): Triton must not batch it, so dims keep the 4."""
    artifact = _trt_artifact(tmp_path, fixed_batch=4)
    config = parse_pbtxt((write_triton_repo(tmp_path / "repo", artifact, "fixed") / "config.pbtxt").read_text())
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [4, 1, 28, 28] and config["output"][0]["dims"] == [4, 10]
    with pytest.raises(UsageError, match="batch dimension is fixed"):
        write_triton_repo(tmp_path / "repo2", artifact, "fixed", max_batch_size=4)
    assert not (tmp_path / "repo2").exists()


def test_max_batch_beyond_engine_profile_is_refused(tmp_path):
    with pytest.raises(UsageError, match="profile maximum 8"):
        write_triton_repo(tmp_path / "repo", _trt_artifact(tmp_path, profile_max=8), "demo", max_batch_size=16)
    assert not (tmp_path / "repo").exists()


def test_bad_name_and_unknown_backend(tmp_path):
    with pytest.raises(UsageError):
        write_triton_repo(tmp_path / "repo", _trt_artifact(tmp_path), "bad name/../x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "m.bin").write_bytes(b"x")
    Artifact(other, "m.bin", {"backend": "openvino"}).save_metadata()
    with pytest.raises(ArtifactError, match="openvino"):
        write_triton_repo(tmp_path / "repo", Artifact.load(other), "m")


def test_an_onnxruntime_artifact_measured_faster_without_an_optimizer_says_triton_cannot_do_that(tmp_path):
    art_dir = tmp_path / "cpu"
    art_dir.mkdir()
    tiny_cnn(art_dir / "model.onnx", channels=3, hw=16, classes=5)
    measured = {"batch": 1, "default_ms": 4.5, "without_qdq_propagation_ms": 2.8}
    Artifact(art_dir, "model.onnx", {"backend": "onnxruntime", "session_options": {"disabled_optimizers": ["QDQPropagationTransformer"],
                                                                                "disabled_optimizers_measured": measured}}).save_metadata()
    text = (write_triton_repo(tmp_path / "repo", Artifact.load(art_dir), "demo_cpu") / "config.pbtxt").read_text()
    assert text.startswith("# note:") and "QDQPropagationTransformer" in text and "2.800 ms without, 4.500 ms with" in text
    assert parse_pbtxt(text)["platform"] == "onnxruntime_onnx"  # still a valid config
