"""Render the synthetic detection set, train the demo detector on CPU, report val mAP.

    python tools/train_detector.py --out build/detector            # 2000/300 images, 160x160
    hadmc-deploy inspect build/detector/yolo_tiny.pth               # the checkpoint names its arch

Writes OUT/data (YOLO format, SYNTHETIC), OUT/yolo_tiny.pth (state_dict + arch spec, loadable by
`hadmc-deploy build/export/inspect`), OUT/train_detector.json (seed, timing, mAP).
The checkpoint records the split-indexed variant (`yolo_tiny_split`, traceable by torch.fx
today); its weights load into `yolo_tiny` (the Ultralytics `chunk` form) as well.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from hadmc_deploy.data import Preprocess
from hadmc_deploy.detection.dataset import load_detection
from hadmc_deploy.detection.evaluate import torch_map
from hadmc_deploy.detection.synthetic import SyntheticSpec, write_synthetic_dataset
from hadmc_deploy.detection.train import DetectorTrainOptions, train_detector
from hadmc_deploy.fileio import atomic_path, write_json_atomic
from hadmc_deploy.models.yolo import yolo_tiny_split
from hadmc_deploy.ui import UI

ARCH = "hadmc_deploy.models.yolo:yolo_tiny_split"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/detector")
    parser.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ui = UI()
    out = Path(args.out)
    spec = SyntheticSpec(train=args.train, val=args.val, size=args.size, seed=args.seed)
    data_dir = out / "data"
    spec_file = data_dir / "dataset.json"
    if not (spec_file.is_file() and json.loads(spec_file.read_text()).get("spec") == asdict(spec)):
        ui.log(f"rendering the synthetic set into {data_dir} ({spec.train} train / {spec.val} val, {spec.size}px)")
        write_synthetic_dataset(data_dir, spec, overwrite=True)
    train = load_detection(f"yolo:{data_dir}:train", Preprocess())
    val = load_detection(f"yolo:{data_dir}:val", Preprocess())
    torch.manual_seed(args.seed)
    kwargs = {"num_classes": train.num_classes, "in_channels": int(train.x.shape[1])}
    model = yolo_tiny_split(**kwargs)
    options = DetectorTrainOptions(epochs=args.epochs, seed=args.seed)
    start = time.perf_counter()
    train_detector(model, train, options, ui=ui)
    seconds = time.perf_counter() - start
    result = torch_map(model, val, ui=ui)
    shape = [1, *train.x.shape[1:]]
    ckpt = out / "yolo_tiny.pth"
    checkpoint = {"arch": ARCH, "arch_kwargs": kwargs, "state_dict": model.state_dict(), "input_shape": shape, "task": "detect",
                  "train_data": train.source, "eval_data": val.source, "class_names": list(train.class_names), "map50": result.map50, "map50_95": result.map50_95}
    with atomic_path(ckpt) as tmp:
        torch.save(checkpoint, tmp)
    record = {"checkpoint": str(ckpt), "arch": ARCH, "arch_kwargs": kwargs, "input_shape": shape, "synthetic_spec": asdict(spec), "train_options": asdict(options),
              "train_seconds": round(seconds, 1), "threads": args.threads, "torch": torch.__version__, "val": result.to_dict(), "class_names": list(train.class_names)}
    write_json_atomic(out / "train_detector.json", record)
    ui.log(f"trained in {seconds:.0f}s; val ({len(val)} images, {result.num_objects} objects): mAP@0.5 {result.map50:.1f}%  mAP@0.5:0.95 {result.map50_95:.1f}%; saved {ckpt}")


if __name__ == "__main__":
    main()
