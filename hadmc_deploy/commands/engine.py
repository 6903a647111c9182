"""`hadmc-deploy engine`: finish a TensorRT build on the GPU host from the portable artifacts.

A build for a TensorRT target on a machine without TensorRT stops after the
portable artifacts (verified ONNX, QDQ ONNX, calibration.cache, scales.json).
This command picks them up where the engine can be built: the GPU model and
TensorRT version that build an engine are the only ones it runs on.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hadmc_deploy.data import Preprocess
from hadmc_deploy.errors import BackendUnavailableError, UsageError
from hadmc_deploy.ui import UI

HELP = "build the TensorRT engine on a GPU host from a build directory or an ONNX file"
DESCRIPTION = """Build the TensorRT engine on a GPU host from a build directory (or an ONNX file).

The engine is built from the portable artifacts an earlier `hadmc-deploy build --target t4` left:
model.onnx (float), qdq_s8s8.onnx (INT8, explicit quantization) and calibration.cache (INT8,
implicit calibration on TensorRT 8.6-10.x). An engine runs only on the GPU model and TensorRT
version that built it, so run this on the deployment host.

examples:
  hadmc-deploy engine build/ -o build/engine                       INT8: qdq_s8s8.onnx if present, else calibration.cache (TensorRT <= 10)
  hadmc-deploy engine build/ --int8-mode calibrator -o build/engine  INT8 from model.onnx + calibration.cache (TensorRT <= 10)
  hadmc-deploy engine model.onnx --precision fp16 --batch 1,8,32 -o fp16_engine
  hadmc-deploy engine build/ -o build/engine --triton-repo models/  also lay out a Triton model repository"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="BUILD_DIR_OR_ONNX", help="a build directory with the portable artifacts, or an ONNX file")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory for model.engine and metadata.json")
    parser.add_argument("--target", default="t4", help="target profile (default t4): batch sizes, precisions")
    parser.add_argument("--precision", choices=("int8", "fp16", "fp32"), default=None, help="default: the target's")
    parser.add_argument("--int8-mode", choices=("auto", "qdq", "calibrator"), default="auto",
                        help="auto (default): qdq when qdq_s8s8.onnx exists, else the calibrator where this TensorRT has one; "
                        "qdq: explicit quantization from qdq_s8s8.onnx (TensorRT 8.6-11); "
                        "calibrator: implicit calibration from calibration.cache or --calib data (TensorRT 8.6-10.x)")
    parser.add_argument("--calibrator", choices=("entropy", "minmax"), default="entropy", help="calibrator class for --int8-mode calibrator")
    parser.add_argument("--calib-cache", metavar="FILE", help="TensorRT calibration cache (default: calibration.cache in the build directory)")
    parser.add_argument("--calib", metavar="DATA", help="calibration data for --int8-mode calibrator when no cache exists")
    parser.add_argument("--calib-samples", type=int, default=512, metavar="N", help="calibration samples from --calib (default 512)")
    parser.add_argument("--batch", metavar="MIN,OPT,MAX", help="optimization profile batch sizes (default: the target's batch sizes)")
    parser.add_argument("--workspace-mb", type=int, default=1024, metavar="N", help="builder workspace limit in MiB (default 1024)")
    parser.add_argument("--fp32-rest", action="store_true", help="INT8: keep unquantized layers in FP32 instead of FP16")
    parser.add_argument("--triton-repo", metavar="DIR", help="also write a Triton model repository there")
    parser.add_argument("--triton-name", metavar="NAME", help="model name in the Triton repository (default: the output directory's name)")


def _sources(source: Path) -> dict[str, Path]:
    from hadmc_deploy.backends.tensorrt_artifact import portable_artifacts, sibling_qdq

    if source.is_dir():
        found = portable_artifacts(source)
        if "float_onnx" not in found and "qdq_onnx" not in found:
            raise UsageError(f"{source} holds no float or QDQ ONNX (model.onnx, baseline.onnx, qdq_s8s8.onnx, ...)",
                             hint="pass the directory `hadmc-deploy build` wrote, or an ONNX file")
        return found
    if source.is_file() and source.suffix == ".onnx":
        found = {"float_onnx": source}
        for role, path in (("qdq_onnx", sibling_qdq(source)), ("calibration_cache", sibling_qdq(source, "calibration_cache"))):
            if path.is_file():
                found[role] = path
        return found
    raise UsageError(f"{source} is neither a build directory nor an .onnx file")


def calib_preprocess(onnx_path: Path, source: Path) -> Preprocess:
    """--calib images as the build preprocessed its own: the ONNX input's channels and size, and the
    --mean/--std the build recorded in plan.json (in `source` or a folder above it). They were read
    with the defaults, unresized: a folder of images of other sizes failed, and a build's own
    normalisation was not the calibrator's, whose ranges the deployed inputs then never take."""
    import json

    import onnx

    dims = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    chw = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:4]]
    options: dict[str, Any] = {}
    for folder in ([source] if source.is_dir() else []) + list(source.resolve().parents)[:3]:
        if (folder / "plan.json").is_file():
            options = json.loads((folder / "plan.json").read_text()).get("options") or {}
            break
    mean, std = options.get("mean"), options.get("std")
    channels = chw[0] if chw and chw[0] else None
    size = (chw[1], chw[2]) if len(chw) == 3 and chw[1] and chw[2] else None
    return Preprocess(resize=size, channels=channels, mean=tuple(mean) if mean else None, std=tuple(std) if std else None)


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from hadmc_deploy.backends import BuildRequest, TrtBuildOptions, get
    from hadmc_deploy.backends.tensorrt_artifact import batch_triple_from_sizes, parse_batch_triple
    from hadmc_deploy.targets import get_target

    source = Path(args.source)
    found = _sources(source)
    target = get_target(args.target, args.targets_file)
    if target.backend != "tensorrt":
        raise UsageError(f"target {target.name!r} uses backend {target.backend!r}, not TensorRT", hint="use --target t4 or cuda")
    precision = args.precision or target.default_precision
    if precision not in target.precisions:
        raise UsageError(f"target {target.name!r} does not offer {precision}", hint=f"choose one of {', '.join(target.precisions)}")
    batch = parse_batch_triple(args.batch) if args.batch else batch_triple_from_sizes(target.batch_sizes)
    if args.workspace_mb < 1:
        raise UsageError(f"--workspace-mb must be positive, got {args.workspace_mb}")
    calib_cache = Path(args.calib_cache) if args.calib_cache else found.get("calibration_cache")
    if args.calib_cache and not calib_cache.is_file():
        raise UsageError(f"--calib-cache {calib_cache} does not exist")
    int8 = precision == "int8"
    has_calib_input = calib_cache is not None or bool(args.calib)
    if int8 and args.int8_mode == "qdq" and "qdq_onnx" not in found:
        raise UsageError(f"{source} has no QDQ graph (qdq_s8s8.onnx) for INT8 explicit quantization",
                         hint="run the INT8 stage on the CPU host first, or use --int8-mode calibrator with calibration.cache")
    if int8 and args.int8_mode == "auto" and "qdq_onnx" not in found and not has_calib_input:
        raise UsageError(f"{source} has no QDQ graph (qdq_s8s8.onnx) and no calibration.cache for INT8",
                         hint="run the INT8 stage on the CPU host first (`hadmc-deploy build ... --calib DATA`)")
    if int8 and args.int8_mode == "calibrator" and not has_calib_input:
        raise UsageError("--int8-mode calibrator needs calibration.cache (or --calib-cache FILE) or --calib DATA")
    onnx_path = found.get("float_onnx") or found["qdq_onnx"]

    backend = get("tensorrt")
    ok, reason = backend.available()
    if not ok:
        raise BackendUnavailableError(
            f"cannot build the TensorRT engine here: {reason}",
            hint="run this command on the GPU host with TensorRT (the engine is valid only on the GPU and TensorRT version that build it)",
        )
    calib_data = None
    if int8 and args.calib:
        from hadmc_deploy.data import load_data

        calib_data = load_data(args.calib, calib_preprocess(Path(onnx_path), source), limit=args.calib_samples)
    request = BuildRequest(
        onnx_path=onnx_path, precision=precision, out_dir=Path(args.output), target=target,
        qdq_graph=found.get("qdq_onnx") if int8 else None,
        calibration_cache=calib_cache if int8 and not args.calib else None,
        calibration_data=calib_data, ui=ui,
        trt=TrtBuildOptions(int8_mode=args.int8_mode, calibrator=args.calibrator, batch=batch, workspace_mb=args.workspace_mb,
                            fp16_rest=False if args.fp32_rest else None),
    )
    artifact = backend.build(request)
    meta = artifact.metadata
    ui.out.print(f"engine: {artifact.model_path} ({meta['precision_path']}, TensorRT {meta['tensorrt_version']}, "
                 f"{meta['gpu_name']} sm_{str(meta['compute_capability']).replace('.', '')}, built in {meta['build_seconds']:.1f} s)")
    result: dict[str, Any] = {"artifact": str(artifact.path), "engine": str(artifact.model_path), **{
        k: meta.get(k) for k in ("precision", "precision_path", "tensorrt_version", "gpu_name", "compute_capability", "profile", "layers")}}
    if args.triton_repo:
        from hadmc_deploy.triton import write_triton_repo

        name = args.triton_name or Path(args.output).resolve().name
        model_dir = write_triton_repo(args.triton_repo, artifact, name, preferred_batch_sizes=list(target.batch_sizes))
        ui.out.print(f"Triton model repository: {model_dir}")
        result["triton_model_dir"] = str(model_dir)
    return result
