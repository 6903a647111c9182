"""The YOLO-style detector, its decoder, and mAP of torch / ONNX / QDQ variants by output name."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx

from hadmc_deploy.detection.dataset import DetectionDataset, load_detection
from hadmc_deploy.detection.decode import DecodeOptions, decode
from hadmc_deploy.detection.evaluate import DetectionEvalOptions, onnx_map, pick_outputs, torch_map
from hadmc_deploy.detection.synthetic import SyntheticSpec, write_synthetic_dataset
from hadmc_deploy.errors import DataError
from hadmc_deploy.models.yolo import yolo_tiny, yolo_tiny_split


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights with BN statistics moved off their defaults, so folding and export see real numbers."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
    return model.eval()


def test_outputs_are_three_maps_at_strides_8_16_32() -> None:
    model = yolo_tiny(num_classes=4, in_channels=3).eval()
    outs = model(torch.zeros(2, 3, 96, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 12, 16), (2, 8, 6, 8), (2, 8, 3, 4)]


def test_chunk_and_split_forms_compute_the_same_and_only_split_traces_with_fx() -> None:
    faithful = _trained_like(yolo_tiny())
    split = yolo_tiny_split()
    split.load_state_dict(faithful.state_dict())
    split.eval()
    x = torch.randn(2, 1, 64, 64)
    for a, b in zip(faithful(x), split(x), strict=True):
        torch.testing.assert_close(a, b)
    traced = torch.fx.symbolic_trace(split)
    assert sum(n.target == "split" for n in traced.graph.nodes) == len([m for m in split.modules() if type(m).__name__ == "C2f"])
    with pytest.raises(torch.fx.proxy.TraceError):  # the Ultralytics form needs the graph branch's tracer
        torch.fx.symbolic_trace(faithful)


def test_decode_recovers_a_planted_box() -> None:
    nc, hw = 3, (64, 64)
    maps = [np.full((1, 4 + nc, 64 // s, 64 // s), -10.0, np.float32) for s in (8, 16, 32)]
    # one object of class 2 seen at the stride-16 cell (1, 2): centre (40, 24), box (30, 14)-(54, 40)
    ltrb_pixels = np.array([10, 10, 14, 16], np.float32)
    maps[1][0, :4, 1, 2] = np.log(np.expm1(ltrb_pixels / 16))  # softplus^-1
    maps[1][0, 4 + 2, 1, 2] = 3.0
    (dets,) = decode(list(reversed(maps)), hw, DecodeOptions(conf_threshold=0.5))  # any output order
    assert dets.classes.tolist() == [2]
    np.testing.assert_allclose(dets.boxes[0], [30, 14, 54, 40], atol=1e-4)
    assert dets.scores[0] == pytest.approx(1 / (1 + math.exp(-3)), rel=1e-5)


def test_decode_rejects_maps_that_do_not_fit_the_input() -> None:
    with pytest.raises(DataError, match="divide the input"):
        decode([np.zeros((1, 6, 8, 5), np.float32)], (64, 64))
    with pytest.raises(DataError, match="no output 'boxes'"):
        pick_outputs({"output": np.zeros(1)}, ["boxes"])


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataset:
    root = write_synthetic_dataset(tmp_path_factory.mktemp("det") / "set", SyntheticSpec(train=1, val=24, size=64, min_object=8, max_object=28))
    return load_detection(f"yolo:{root}:val")


def _planted_detector(data: DetectionDataset) -> torch.nn.Module:
    """A 'model' that emits the ground truth of each image as head maps: mAP must be 100."""

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            maps = [torch.full((len(x), 4 + data.num_classes, 64 // s, 64 // s), -12.0) for s in (8, 16, 32)]
            for i in range(len(x)):
                key = int(np.argmin([np.abs(data.x[j] - x[i].numpy()).sum() for j in range(len(data))]))
                for cls, x1, y1, x2, y2 in data.labels[key]:
                    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                    col, row = min(int(cx // 8), 7), min(int(cy // 8), 7)
                    ax, ay = (col + 0.5) * 8, (row + 0.5) * 8
                    dist = np.clip(np.array([ax - x1, ay - y1, x2 - ax, y2 - ay]), 1e-3, None) / 8
                    maps[0][i, :4, row, col] = torch.from_numpy(np.log(np.expm1(dist)).astype(np.float32))
                    maps[0][i, 4 + int(cls), row, col] = 6.0
            return tuple(maps)

    return Oracle()


def test_map_of_an_oracle_is_100(val_set: DetectionDataset) -> None:
    result = torch_map(_planted_detector(val_set), val_set, DetectionEvalOptions(batch_size=8))
    assert result.map50 == pytest.approx(100.0, abs=1e-6)
    assert result.map50_95 > 99.0  # boxes decode exactly up to float rounding


@pytest.mark.slow  # export + calibration + three ORT evaluations: ~30 s idle, ~2 min on a loaded 2-core box
def test_onnx_and_qdq_variants_by_output_name(val_set: DetectionDataset, tmp_path: Path) -> None:
    from hadmc_deploy.calibration.collect import collect_ranges
    from hadmc_deploy.calibration.qdq import write_qdq
    from hadmc_deploy.export import export_onnx

    torch.manual_seed(0)
    model = _trained_like(yolo_tiny_split(num_classes=6))
    exported = export_onnx(model, (1, 1, 64, 64), tmp_path / "yolo.onnx", verify_inputs=val_set.x[:4])
    assert exported.output_names == ["output", "output_1", "output_2"]
    options = DetectionEvalOptions(decode=DecodeOptions(conf_threshold=0.05), batch_size=10)
    reference = torch_map(model, val_set, options)
    assert onnx_map(exported.path, val_set, options).map50_95 == pytest.approx(reference.map50_95, abs=0.5)
    named = DetectionEvalOptions(decode=options.decode, batch_size=10, output_names=("output_2", "output", "output_1"))
    assert onnx_map(exported.path, val_set, named).map50_95 == pytest.approx(reference.map50_95, abs=0.5)
    with pytest.raises(DataError, match="no output 'boxes'"):
        onnx_map(exported.path, val_set, DetectionEvalOptions(output_names=("boxes",)))
    ranges = collect_ranges(exported.path, val_set, method="minmax", num_samples=16)  # detection data feeds calibration as is
    qdq = write_qdq(exported.path, ranges, tmp_path / "yolo_int8.onnx", form="qdq_u8s8")
    int8 = onnx_map(qdq, val_set, options)
    assert int8.num_images == len(val_set) and np.isfinite(int8.map50_95)
