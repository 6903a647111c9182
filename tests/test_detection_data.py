"""The YOLO-format loader and the synthetic set: determinism, box round trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hadmc_deploy.data import ArrayDataset, Preprocess
from hadmc_deploy.detection.dataset import (
    DetectionDataset,
    is_detection_source,
    load_detection,
    load_source,
    parse_data_yaml,
)
from hadmc_deploy.detection.synthetic import CLASS_NAMES, SyntheticSpec, write_synthetic_dataset
from hadmc_deploy.errors import DataError, UsageError

SPEC = SyntheticSpec(train=6, val=3, size=64, min_object=8, max_object=28, seed=3)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("det") / "set", SPEC)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_set_is_deterministic_and_in_yolo_layout(dataset_dir: Path, tmp_path: Path) -> None:
    again = write_synthetic_dataset(tmp_path / "again", SPEC)
    assert _files(dataset_dir) == _files(again)
    other = write_synthetic_dataset(tmp_path / "other", SyntheticSpec(**{**SPEC.__dict__, "seed": 4}))
    assert _files(dataset_dir) != _files(other)
    assert len(list((dataset_dir / "images" / "train").glob("*.png"))) == 6
    assert len(list((dataset_dir / "labels" / "val").glob("*.txt"))) == 3
    assert "SYNTHETIC" in (dataset_dir / "data.yaml").read_text()


def test_existing_output_is_not_overwritten_silently(dataset_dir: Path) -> None:
    with pytest.raises(UsageError, match="already exists"):
        write_synthetic_dataset(dataset_dir, SPEC)


def test_loader_returns_pixel_boxes_matching_the_label_files(dataset_dir: Path) -> None:
    data = load_detection(f"yolo:{dataset_dir}:train")
    assert isinstance(data, ArrayDataset)  # calibration takes it unchanged
    assert data.x.shape == (6, 1, 64, 64) and data.x.dtype == np.float32
    assert data.class_names == CLASS_NAMES and data.num_classes == 6
    first = np.loadtxt(dataset_dir / "labels" / "train" / "000000.txt", ndmin=2)
    boxes = data.labels[0]
    assert boxes[:, 0].tolist() == first[:, 0].tolist()
    np.testing.assert_allclose((boxes[:, 1] + boxes[:, 3]) / 2 / 64, first[:, 1], atol=1e-5)
    np.testing.assert_allclose((boxes[:, 4] - boxes[:, 2]) / 64, first[:, 4], atol=1e-5)
    # every box lies in the image and has an area
    for lab in data.labels:
        assert (lab[:, 1:] >= 0).all() and (lab[:, 1:] <= 64).all() and (lab[:, 3] > lab[:, 1]).all()


def test_resize_scales_boxes_and_channels_replicate(dataset_dir: Path) -> None:
    small = load_detection(f"{dataset_dir}/data.yaml:val", Preprocess(resize=(32, 32), channels=3))
    full = load_detection(f"yolo:{dataset_dir}")  # val is the default split
    assert small.x.shape == (3, 3, 32, 32)
    assert full.source.endswith(str(dataset_dir))
    for a, b in zip(small.labels, full.labels, strict=True):
        np.testing.assert_allclose(a[:, 1:], b[:, 1:] / 2, atol=1e-5)


def test_subset_keeps_boxes_with_their_images_and_the_hash_sees_labels(dataset_dir: Path) -> None:
    data = load_detection(f"yolo:{dataset_dir}:train")
    part = data.subset(3, seed=1)
    for i, idx in enumerate(part.y):
        np.testing.assert_array_equal(part.x[i], data.x[idx])
        np.testing.assert_array_equal(part.labels[i], data.labels[idx])
    moved = data.take(np.arange(len(data)))
    moved.labels[0] = moved.labels[0] + 1
    assert moved.sha256() != data.sha256()


def test_task_is_inferred_from_the_source(dataset_dir: Path) -> None:
    assert is_detection_source(f"yolo:{dataset_dir}:val")
    assert is_detection_source(str(dataset_dir))
    assert is_detection_source(f"{dataset_dir}:train")
    assert not is_detection_source("builtin:digits:test")
    assert not is_detection_source(str(dataset_dir / "images"))


def test_data_yaml_forms() -> None:
    listed = parse_data_yaml("path: ../d  # root\ntrain: images/train\nval: images/val\nnames: ['a', 'b c']\n", "x")
    assert listed["names"] == ["a", "b c"] and listed["path"] == "../d"
    mapped = parse_data_yaml("val: images/val\nnames:\n  0: scratch\n  1: patch\n", "x")
    assert mapped["names"] == {0: "scratch", 1: "patch"}


def test_bad_labels_and_missing_splits_name_the_file(dataset_dir: Path, tmp_path: Path) -> None:
    copy = write_synthetic_dataset(tmp_path / "bad", SPEC)
    (copy / "labels" / "val" / "000001.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"000001\.txt:1: expected `cls cx cy w h`"):
        load_detection(f"yolo:{copy}:val")
    (copy / "labels" / "val" / "000001.txt").write_text("9 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="class 9 is not an integer in 0..5"):
        load_detection(f"yolo:{copy}:val")
    with pytest.raises(DataError, match="no 'test' split"):
        load_detection(f"yolo:{dataset_dir}:test")
    with pytest.raises(DataError, match="data.yaml"):
        load_detection(f"yolo:{tmp_path}")


def test_load_source_dispatches_on_the_format(dataset_dir: Path) -> None:
    assert isinstance(load_source(f"yolo:{dataset_dir}:val", limit=2), DetectionDataset)
    digits = load_source("builtin:digits:test", limit=5)
    assert not isinstance(digits, DetectionDataset) and len(digits) == 5
