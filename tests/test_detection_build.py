"""The whole build on a YOLO-style detector (Ultralytics' C2f chunk form) with a detection set
in YOLO format: the task is inferred from the data, channel groups go through chunk/concat/
upsample, the three head outputs keep their layout, INT8 is calibrated on the images, every
variant is scored by mAP@0.5:0.95, and the decision and report use that metric.

The detector is at random init (training one takes minutes; tools/train_detector.py does),
so the mAP values are near zero; what is asserted is the wiring, not the accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hadmc_deploy.cli import main
from hadmc_deploy.detection.synthetic import SyntheticSpec, write_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("det") / "set", SyntheticSpec(train=24, val=12, size=64, min_object=8, max_object=24))


def test_detector_build_end_to_end(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    rc = main(["build", "--arch", "hadmc_deploy.models.yolo:yolo_tiny", "--input-shape", "1,1,64,64", "--target", "cpu",
               "--ratio", "0.25", "--train", f"yolo:{dataset}:train", "--eval", f"yolo:{dataset}:val", "--epochs", "0.5",
               "--batch", "1", "--runs", "3", "--warmup", "1", "--mean", "0", "--std", "1", "--out", str(out), "-q"])
    report = json.loads((out / "report.json").read_text())
    assert rc in (0, 15), rc
    assert report["accuracy"]["metric"].startswith("mAP@0.5:0.95")
    names = [v["name"] for v in report["variants"]]
    assert {"baseline-fp32", "baseline-int8", "pruned-fp32", "pruned-int8"} <= set(names)
    for v in report["variants"]:
        assert v["detection"] is not None and 0.0 <= v["detection"]["map50"] <= 100.0
        assert v["accuracy"] == pytest.approx(v["detection"]["map50_95"])
    # pruning narrowed the backbone/neck but the three head outputs keep their shapes
    outputs = report["model"]["outputs"]
    assert len(outputs) == 3 and all(shape[1] == 4 + 6 for shape in outputs.values())
    pruned = next(v for v in report["variants"] if v["name"] == "pruned-fp32")
    assert pruned["params"] < report["model"]["params"]
    assert report["recovery"]["detail"]["mode"] == "output-distillation"
    assert report["decision"]["deploy"] in names
