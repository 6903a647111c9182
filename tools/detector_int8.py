"""INT8 on the demo detector: mAP FP32 vs INT8, and which layer groups cost mAP when quantized.

    python tools/train_detector.py --out build/detector
    python tools/detector_int8.py --out build/detector            # writes docs/detection_int8.json

Exports the checkpoint (hadmc_deploy.export), calibrates on training images with the
pipeline's calibration (collect_ranges, entropy by default), writes QDQ graphs in both
forms (qdq_u8s8 with ORT placement, qdq_s8s8 with TensorRT placement) and measures mAP in
ONNX Runtime on the val split. Sensitivity: each group of convolutions (backbone, neck,
box branch, box output 1x1, class branch, class output 1x1) quantized ALONE (the rest
float) and left FLOAT ALONE (the rest INT8); the mAP of each says what that group costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx
import torch

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.data import Preprocess
from hadmc_deploy.detection.dataset import load_detection
from hadmc_deploy.detection.evaluate import onnx_map
from hadmc_deploy.export import export_onnx
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
from hadmc_deploy.loading import load_model
from hadmc_deploy.ui import UI

GROUPS = {  # module-path prefix -> group; first match wins (the head's output 1x1 convs are `.2`)
    "head.box.0.2": "box output 1x1", "head.box.1.2": "box output 1x1", "head.box.2.2": "box output 1x1",
    "head.cls.0.2": "class output 1x1", "head.cls.1.2": "class output 1x1", "head.cls.2.2": "class output 1x1",
    "head.box": "box branch 3x3", "head.cls": "class branch 3x3",
    "stem": "backbone", "stage": "backbone",
    "td": "neck", "bu": "neck", "down": "neck",
}


def conv_groups(model: torch.nn.Module, onnx_path: Path) -> dict[str, list[str]]:
    """ONNX Conv node names per group; the exporter names each weight by its module path."""
    convs = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    groups: dict[str, list[str]] = {}
    for node in onnx.load(str(onnx_path)).graph.node:
        if node.op_type != "Conv":
            continue
        module = node.input[1].removesuffix(".weight")
        if module not in convs:
            raise SystemExit(f"ONNX Conv {node.name} has weight {node.input[1]!r}, not named after a module; cannot group it")
        group = next(g for prefix, g in GROUPS.items() if module.startswith(prefix))
        groups.setdefault(group, []).append(node.name)
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/detector")
    parser.add_argument("--method", default="entropy", choices=("entropy", "minmax", "percentile"))
    parser.add_argument("--calib-samples", type=int, default=256)
    parser.add_argument("--json", default="docs/detection_int8.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ui = UI()
    out = Path(args.out)
    record = json.loads((out / "train_detector.json").read_text())
    loaded = load_model(record["checkpoint"])
    shape = tuple(record["input_shape"])
    data = out / "data"
    val = load_detection(f"yolo:{data}:val", Preprocess())
    calib = load_detection(f"yolo:{data}:train", Preprocess(), limit=args.calib_samples, seed=1)
    onnx_path = out / "yolo_tiny.onnx"
    exported = export_onnx(loaded.model, shape, onnx_path, verify_inputs=val.x[:8], ui=ui)
    ui.log(f"exported {onnx_path}: outputs {exported.output_names}")
    start = time.perf_counter()
    ranges = collect_ranges(onnx_path, calib, method=args.method, num_samples=args.calib_samples, ui=ui)
    groups = conv_groups(loaded.model, onnx_path)
    all_convs = [n for names in groups.values() for n in names]
    rows: dict = {"fp32": onnx_map(onnx_path, val).to_dict()}
    ui.log(f"FP32 ONNX: mAP@0.5 {rows['fp32']['map50']:.1f}  mAP@0.5:0.95 {rows['fp32']['map50_95']:.1f}")
    sensitivity = []
    with tempfile.TemporaryDirectory(prefix="hadmc-det-int8-") as tmp:
        for form in ("qdq_u8s8", "qdq_s8s8"):
            path = write_qdq(onnx_path, ranges, Path(tmp) / f"{form}.onnx", form=form)
            rows[f"int8 {form}"] = onnx_map(path, val).to_dict()
            ui.log(f"INT8 {form}: mAP@0.5 {rows[f'int8 {form}']['map50']:.1f}  mAP@0.5:0.95 {rows[f'int8 {form}']['map50_95']:.1f}")
        # ORT placement also quantizes concat/pool/resize outputs: the head's Concat puts box and
        # class logits under ONE scale. Measure it with the graph outputs' producers left float.
        graph = onnx.load(str(onnx_path)).graph
        outputs = {o.name for o in graph.output}
        concat_out = [n.name for n in graph.node if set(n.output) & outputs]
        producer = {out: n.name for n in graph.node for out in n.output}
        cls_out = {n.name: n for n in graph.node if n.name in groups["class output 1x1"]}
        cls_inputs = [producer[n.input[0]] for n in cls_out.values() if n.input[0] in producer]  # the SiLU Mul feeding each
        variants = (("head output concat float", concat_out),
                    ("class output 1x1 convs + their input producers float", list(cls_out) + cls_inputs))
        for label, names in variants:
            path = write_qdq(onnx_path, ranges, Path(tmp) / "mixed.onnx", form="qdq_u8s8", float_nodes=names)
            rows[f"int8 qdq_u8s8, {label}"] = onnx_map(path, val).to_dict()
            ui.log(f"INT8 qdq_u8s8, {label}: mAP@0.5 {rows[f'int8 qdq_u8s8, {label}']['map50']:.1f}  mAP@0.5:0.95 {rows[f'int8 qdq_u8s8, {label}']['map50_95']:.1f}")
        # Per group in TensorRT placement: Q/DQ sit only on conv inputs, so leaving convs float isolates them exactly.
        for group, names in groups.items():
            alone = write_qdq(onnx_path, ranges, Path(tmp) / "alone.onnx", form="qdq_s8s8", float_nodes=[n for n in all_convs if n not in names])
            only_alone = onnx_map(alone, val)
            kept = write_qdq(onnx_path, ranges, Path(tmp) / "kept.onnx", form="qdq_s8s8", float_nodes=names)
            kept_float = onnx_map(kept, val)
            sensitivity.append({"group": group, "convs": len(names), "quantized_alone": {"map50": only_alone.map50, "map50_95": only_alone.map50_95},
                                "left_float_rest_int8": {"map50": kept_float.map50, "map50_95": kept_float.map50_95}})
            ui.log(f"{group:18s} ({len(names):2d} convs): INT8 alone {only_alone.map50_95:.1f}; float alone (rest INT8) {kept_float.map50_95:.1f}  [mAP@0.5:0.95]")
    result = {"checkpoint": record["checkpoint"], "val_images": len(val), "val_objects": rows["fp32"]["num_objects"], "calibration": {"method": args.method, "samples": len(calib)},
              "torch_val": record["val"], "variants": rows, "sensitivity_qdq_s8s8": sensitivity, "seconds": round(time.perf_counter() - start, 1), "synthetic": True}
    write_json_atomic(args.json, result)
    write_text_atomic(Path(args.json).with_suffix(".md"), render(result, record))
    ui.log(f"wrote {args.json} and {Path(args.json).with_suffix('.md')}")


def render(result: dict, record: dict) -> str:
    """The markdown table of docs/detection_int8.md (numbers from this run only)."""
    spec, train = record["synthetic_spec"], record["train_options"]
    lines = [
        "# Demo detector: mAP FP32 vs INT8 (generated by tools/detector_int8.py; SYNTHETIC data)",
        "",
        f"Model `{record['arch']}` {record['arch_kwargs']}, input {record['input_shape']}; trained by tools/train_detector.py on "
        f"{spec['train']} synthetic images ({spec['size']}px, seed {spec['seed']}) for {train['epochs']} epochs in {record['train_seconds']} s "
        f"on {record['threads']} CPU thread(s). Val: {result['val_images']} synthetic images, {result['val_objects']} objects. "
        f"Calibration: {result['calibration']['method']} on {result['calibration']['samples']} training images.",
        "",
        "| variant | mAP@0.5 | mAP@0.5:0.95 |",
        "|---|---:|---:|",
        f"| PyTorch (train_detector.py) | {record['val']['map50']:.1f} | {record['val']['map50_95']:.1f} |",
    ]
    lines += [f"| {name} (ONNX Runtime) | {row['map50']:.1f} | {row['map50_95']:.1f} |" for name, row in result["variants"].items()]
    lines += ["", "Sensitivity by layer group (qdq_s8s8, TensorRT placement: Q/DQ only on conv inputs, so a group left float is exactly float):", "",
              "| group | convs | mAP@0.5:0.95, group INT8 alone | mAP@0.5:0.95, group float alone (rest INT8) |", "|---|---:|---:|---:|"]
    lines += [f"| {s['group']} | {s['convs']} | {s['quantized_alone']['map50_95']:.1f} | {s['left_float_rest_int8']['map50_95']:.1f} |" for s in result["sensitivity_qdq_s8s8"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
