"""`hadmc-deploy export`: a model to one verified ONNX file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from hadmc_deploy.commands.common import add_model_argument, input_shape_for, load_from_args
from hadmc_deploy.errors import UsageError
from hadmc_deploy.ui import UI

HELP = "export a model to ONNX: simplified, checked, and verified in ONNX Runtime against PyTorch"
DESCRIPTION = """Export MODEL to a single ONNX file with the dynamo exporter (the TorchScript exporter when
dynamo fails, with the reason shown), a dynamic batch axis, inputs named "input" and outputs
"output", BatchNorm folded, simplified with onnxslim (onnxsim as fallback), checked with
onnx.checker, then run in ONNX Runtime and compared with PyTorch. An error above
--atol + --rtol * |torch| fails the export (exit 12) and names the worst output element.

Verification uses real inputs from --verify-data (default: the checkpoint's recorded eval
data when it has one, else random inputs, reported as such).

examples:
  hadmc-deploy export build/demo/demo.pth -o demo.onnx --verify-data builtin:fashion-mnist:test
  hadmc-deploy export --arch hadmc_deploy.models.resnet:resnet18 --input-shape 1,3,224,224 -o r18.onnx
  hadmc-deploy export model.pth --arch nets.py:net --opset 13 --static-batch -o net.onnx --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, required=False)
    parser.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the ONNX file (written atomically)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; TensorRT parses 9-25)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim/onnxsim (BatchNorm is still folded)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch axis to --input-shape's N instead of a dynamic axis")
    parser.add_argument("--verify-data", metavar="SOURCE", help="real inputs for verification (builtin:fashion-mnist:test, data.npz, an image folder, ...)")
    parser.add_argument("--verify-samples", type=int, default=64, help="how many samples of --verify-data to compare (default 64)")
    parser.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance of the check (default 1e-3)")
    parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check (default 1e-4)")


def _verify_source(args: argparse.Namespace, loaded: Any) -> str | None:
    if args.verify_data:
        return args.verify_data
    recorded = loaded.info.get("eval_data")
    if isinstance(recorded, str) and (recorded.startswith("builtin:") or Path(recorded.split(":")[0]).exists()):
        return recorded
    return None


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from hadmc_deploy.data import Preprocess, load_data
    from hadmc_deploy.export import export_onnx

    if args.verify_samples < 1:
        raise UsageError(f"--verify-samples must be >= 1, got {args.verify_samples}")
    loaded = load_from_args(args)
    shape = input_shape_for(args, loaded)
    source = _verify_source(args, loaded)
    verify_inputs = None
    if source is not None:
        data = load_data(source, Preprocess(resize=(shape[2], shape[3]), channels=shape[1]), limit=args.verify_samples)
        verify_inputs = data.x
        ui.log(f"verifying on {len(data)} samples of {source}")
    else:
        ui.warn("no --verify-data: verifying on random inputs (real data catches more; pass --verify-data SOURCE)")
    result = export_onnx(
        loaded.model,
        shape,
        args.output,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        simplify=not args.no_simplify,
        verify_inputs=verify_inputs,
        rtol=args.rtol,
        atol=args.atol,
        ui=ui,
    )
    v = result.verification
    table = Table(title=f"exported {result.path}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("exporter", result.exporter + (f"  ({result.exporter_fallback_reason})" if result.exporter_fallback_reason else "")),
        ("opset", str(result.opset)),
        ("simplifier", result.simplifier),
        ("input", f"{result.input_name} {result.input_shape}"),
        ("outputs", ", ".join(f"{n} {s}" for n, s in zip(result.output_names, result.output_shapes, strict=True))),
        ("nodes", f"{result.nodes_exported} exported -> {result.nodes_final} final"),
        ("verified", f"{v.samples} {v.inputs} samples{' from ' + source if source else ''}: max abs err {v.max_abs_err:.3g}, max rel err {v.max_rel_err:.3g}"),
        ("size", f"{result.size_bytes / 1e6:.2f} MB  sha256 {result.sha256[:16]}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    ui.out.print(table)
    for note in result.warnings:
        ui.warn(note)
    return {**result.to_dict(), "verify_source": source}
