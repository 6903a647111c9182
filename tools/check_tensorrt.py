"""Verify the TensorRT backend on a GPU host with TensorRT: build, compare with ONNX Runtime, benchmark.

    python tools/check_tensorrt.py                       # writes docs/tensorrt_check.{json,md}
    python tools/check_tensorrt.py --out-dir /tmp/trt --models demo --budget-s 120

For ResNet-18 (random init, 3x224x224: only speed and agreement matter) and the
demo CNN (random init, 1x28x28) it exports a verified ONNX, collects activation
ranges on Fashion-MNIST (random normal inputs where the dataset is missing,
recorded as such), writes the QDQ graph and calibration.cache with the project's
INT8 stage, then builds every precision path this TensorRT has: FP32, FP16,
INT8 by explicit quantization (QDQ) and, on 8.6-10.x, INT8 by implicit
calibration twice: from our CPU cache, and by TensorRT's own entropy calibrator
on the calibration data. Calibration is fresh on every run: the ranges, QDQ graph
and cache are recomputed, each engine is built in a new staging directory (no
earlier calibration.cache can be read), and a device-calibration row whose
metadata says it read a cache is an error. Each engine's outputs are compared
with ONNX Runtime's FP32 outputs on the same inputs (max/mean abs error, top-1
agreement) and timed with CUDA events at several batch sizes (p50/p90/p99,
throughput); the INT8 rows get speed ratios over FP16 (the baseline a T4 user
deploys) and FP32, measured side by side. Every engine is built with detailed
profiling verbosity and profiled with TensorRT's IProfiler at the largest batch: the
per-ONNX-node table is printed, and the per-layer sum is checked against the measured
p50 (check_tensorrt_profile.py says what passes). Builds stop when the time budget
(default 270 s) is spent; what was skipped is recorded. Without TensorRT or a GPU
it prints one line saying why and exits 13.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from check_tensorrt_profile import print_profile, profile_markdown, profile_variant

from hadmc_deploy.backends import BuildRequest, TrtBuildOptions
from hadmc_deploy.targets import get_target

UNAVAILABLE_EXIT = 13
MODELS = {
    "resnet18": ("hadmc_deploy.models.resnet", "resnet18", {"num_classes": 1000}, (3, 224, 224)),
    "demo": ("hadmc_deploy.models.demo", "demo_cnn", {}, (1, 28, 28)),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="docs", help="where tensorrt_check.json/.md go (default docs/)")
    p.add_argument("--work-dir", default="build/tensorrt_check", help="ONNX graphs and engines (default build/tensorrt_check)")
    p.add_argument("--models", default="demo,resnet18", help="comma-separated: demo, resnet18 (the fast one first)")
    p.add_argument("--batches", default="1,8,32", help="benchmark batch sizes (also the engines' profile)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--eval-samples", type=int, default=128)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=270.0, help="stop starting new builds after this many seconds")
    p.add_argument("--context-minutes", type=float, default=4.0,
                   help="`hadmc-deploy lut --target t4` on the demo CNN: layer timing budget before the TensorRT context fit (0 skips)")
    return p.parse_args(argv)


def load_inputs(shape: tuple[int, int, int], n: int) -> tuple[Any, str]:
    """Fashion-MNIST test images at the model's shape, or random normal data where it is missing."""
    from hadmc_deploy.data import ArrayDataset, Preprocess, load_data
    from hadmc_deploy.errors import DataError

    c, h, w = shape
    try:
        data = load_data("builtin:fashion-mnist:test", Preprocess(resize=(h, w) if (h, w) != (28, 28) else None, channels=c), limit=n)
        return data, data.source
    except DataError as exc:
        x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32)
        return ArrayDataset(x, np.zeros(n, np.int64), "random-normal"), f"random normal ({exc.one_line()})"


def ort_outputs(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "max_rel_err": float(diff.max() / max(float(np.abs(ref).max()), 1e-12)),
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
    }


def prepare(name: str, work: Path, args: argparse.Namespace, ui: Any, trt_version: str) -> dict[str, Any]:
    """Export, ranges, QDQ graph and calibration.cache through the project's own stages."""
    import importlib

    import torch

    from hadmc_deploy.calibration.collect import collect_ranges
    from hadmc_deploy.calibration.qdq import write_qdq
    from hadmc_deploy.calibration.trt_cache import write_cache
    from hadmc_deploy.export import export_onnx

    module, fn, kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = getattr(importlib.import_module(module), fn)(**kwargs).eval()
    data, source = load_inputs(shape, args.calib_samples + args.eval_samples)
    calib = data.subset(args.calib_samples) if len(data) > args.calib_samples else data
    x_eval = data.x[-args.eval_samples :]
    work.mkdir(parents=True, exist_ok=True)
    exported = export_onnx(model, (1, *shape), work / "model.onnx", dynamic_batch=True, verify_inputs=x_eval[:8], ui=ui)
    ranges = collect_ranges(exported.path, calib, method="entropy", num_samples=len(calib), ui=ui)
    qdq = write_qdq(exported.path, ranges, work / "qdq_s8s8.onnx", form="qdq_s8s8")
    cache = write_cache(work / "calibration.cache", ranges.amax_by_tensor(), trt_version=trt_version, algo="EntropyCalibration2")
    return {"onnx": Path(exported.path), "qdq": Path(qdq), "cache": cache, "x_eval": x_eval, "data": source,
            "calib": calib, "export_max_abs_err": exported.max_abs_err}


def variants(features: Any) -> list[tuple[str, str, TrtBuildOptions | None, str]]:
    """(name, precision, TensorRT options or None when this TensorRT lacks the path, why skipped)."""
    calib_ok = features.implicit_calibration
    why = f"TensorRT {features.version} has no implicit calibration (removed in 11)"
    base = TrtBuildOptions(profiling_verbosity="detailed")  # layer names carry the ONNX nodes the profile maps to
    calibrator = replace(base, int8_mode="calibrator", calibrator="entropy") if calib_ok else None
    return [
        ("fp32", "fp32", base, ""),
        ("fp16", "fp16", base, ""),
        ("int8-qdq", "int8", replace(base, int8_mode="qdq"), ""),
        ("int8-calibrator-cpu-cache", "int8", calibrator, why),
        ("int8-calibrator-device", "int8", calibrator, why),
    ]


def variant_request(vname: str, precision: str, opts: TrtBuildOptions, prep: dict[str, Any], out_dir: Path,
                    triple: tuple[int, int, int], ui: Any) -> BuildRequest:
    """The request for one row: which INT8 input each variant gets is stated, never found on disk."""
    qdq = prep["qdq"] if vname == "int8-qdq" else None
    cache = prep["cache"] if vname == "int8-calibrator-cpu-cache" else None
    data = prep["calib"] if vname == "int8-calibrator-device" else None  # TensorRT's own calibration, fresh
    return BuildRequest(prep["onnx"], precision, out_dir, get_target("t4"), qdq_graph=qdq, calibration_cache=cache,
                        calibration_data=data, ui=ui, trt=replace(opts, batch=triple))


def run_model(name: str, backend: Any, features: Any, args: argparse.Namespace, start: float, ui: Any) -> dict[str, Any]:
    work = Path(args.work_dir) / name
    prep = prepare(name, work, args, ui, features.version)
    ref = ort_outputs(prep["onnx"], prep["x_eval"])
    batches = [int(b) for b in args.batches.split(",")]
    triple = (min(batches), sorted(batches)[len(batches) // 2], max(batches))
    out: dict[str, Any] = {"data": prep["data"], "export_max_abs_err": prep["export_max_abs_err"], "variants": []}
    for vname, precision, opts, why in variants(features):
        row: dict[str, Any] = {"variant": vname, "precision": precision}
        if opts is None:
            out["variants"].append({**row, "skipped": why})
            continue
        if time.perf_counter() - start > args.budget_s:
            out["variants"].append({**row, "skipped": f"time budget of {args.budget_s:.0f} s spent"})
            continue
        try:
            artifact = backend.build(variant_request(vname, precision, opts, prep, work / f"engine-{vname}", triple, ui))
            calibration = artifact.metadata.get("calibration") or {}
            if vname == "int8-calibrator-device" and calibration.get("read_from_cache"):
                raise RuntimeError("the device-calibration engine read a calibration cache instead of calibrating")
            got = np.concatenate([backend.run(artifact, {"input": prep["x_eval"][i : i + triple[2]]})[artifact.metadata["output_names"][0]]
                                  for i in range(0, len(prep["x_eval"]), triple[2])])
            row.update(path=artifact.metadata["precision_path"], build_s=artifact.metadata["build_seconds"],
                       layers=artifact.metadata.get("layers"), calibration=calibration, **compare(ref, got))
            row["latency"] = {str(b): backend.benchmark(artifact, b, args.warmup, args.runs).to_dict() for b in batches}
        except Exception as exc:  # one failing path must not hide the others' results
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if "latency" in row:
            try:  # after the benchmark: the profiler never runs beside the timed executions
                big = max(batches)
                row["profile"] = profile_variant(artifact, big, row["latency"][str(big)]["p50_ms"], args.runs, args.warmup)
                print_profile(name, vname, row["profile"])
                if row["profile"]["problem"]:
                    row["profile_error"] = row["profile"]["problem"]
            except Exception as exc:
                row["profile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        out["variants"].append(row)
        ui.log(f"{name} {vname}: {row.get('error') or row.get('skipped') or 'ok'}")
    out["ratios"] = speed_ratios(out["variants"], batches)
    return out


def speed_ratios(rows: list[dict[str, Any]], batches: list[int]) -> list[dict[str, Any]]:
    """p50 latency of FP16 and FP32 over each INT8 (and FP32 over FP16): > 1 means the first is slower.

    FP16 is the baseline that matters on a T4: INT8 is worth deploying only where it beats it.
    """
    timed = {r["variant"]: r["latency"] for r in rows if "latency" in r}
    pairs = [(v, base) for v in timed if v.startswith("int8") for base in ("fp16", "fp32")] + [("fp16", "fp32")]
    out = []
    for variant, base in pairs:
        if variant not in timed or base not in timed:
            continue
        per_batch = {str(b): timed[base][str(b)]["p50_ms"] / timed[variant][str(b)]["p50_ms"] for b in batches
                     if str(b) in timed[variant] and str(b) in timed[base] and timed[variant][str(b)]["p50_ms"] > 0}
        out.append({"variant": variant, "over": base, "speedup": per_batch})
    return out


def markdown(report: dict[str, Any]) -> str:
    dev = report["device"]
    lines = [
        "# TensorRT backend check",
        "",
        f"Command: `{report['command']}`  ",
        f"Device: {dev.get('gpu_name')} (compute capability {dev.get('compute_capability')}), TensorRT {dev.get('tensorrt_version')}, "
        f"CUDA {dev.get('cuda_runtime')}; host {report['host']}; total {report['elapsed_s']:.0f} s.",
        "",
        "Errors compare each engine's logits with ONNX Runtime FP32 (CPU) on the same inputs. Latency: CUDA events around "
        "execute_async_v3, milliseconds; throughput in samples/s at p50.",
        "",
    ]
    batches = report["batches"]
    for model, res in report["models"].items():
        lines += [f"## {model}", "", f"Inputs: {res.get('data')}; export max abs err {res.get('export_max_abs_err', float('nan')):.2e}.", ""]
        head = ["variant", "path", "build s", "max abs err", "max rel err", "top-1 agree", "INT8 layers"]
        head += [f"p50/p99 b{b}" for b in batches] + [f"thr b{batches[-1]}"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in res.get("variants", []):
            if "skipped" in v or "error" in v:
                lines.append(f"| {v['variant']} | {v.get('skipped') or v.get('error')} |" + " |" * (len(head) - 2))
                continue
            lat = v["latency"]
            layers = v.get("layers") or {}
            cells = [v["variant"], v["path"], f"{v['build_s']:.1f}", f"{v['max_abs_err']:.2e}", f"{v['max_rel_err']:.2e}",
                     f"{v['top1_agreement']:.3f}", f"{layers.get('int8_layers')}/{layers.get('layers')}"]
            cells += [f"{lat[str(b)]['p50_ms']:.3f}/{lat[str(b)]['p99_ms']:.3f}" for b in batches]
            cells.append(f"{lat[str(batches[-1])]['throughput']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += profile_markdown(model, res.get("variants", []))
        if res.get("ratios"):
            lines += ["Speedup (p50 of the slower precision / p50 of the faster, same run):", "",
                      "| variant | over | " + " | ".join(f"b{b}" for b in batches) + " |", "|---|---|" + "---|" * len(batches)]
            for r in res["ratios"]:
                lines.append(f"| {r['variant']} | {r['over']} | " + " | ".join(f"{r['speedup'].get(str(b), float('nan')):.2f}x" for b in batches) + " |")
            lines.append("")
    return "\n".join(lines)


#: a context fit must reproduce the plans it was fitted on within this (it fits them exactly on ONNX Runtime).
CONTEXT_TOLERANCE = 0.10


def context_fit(work: Path, minutes: float) -> dict[str, Any]:
    """The latency table's TensorRT context fit (`latency/context_probe.py`), for real: the demo
    CNN's table measured with `hadmc-deploy lut --target t4`, then each fitted plan's prediction
    against its measured engine. Only here does the IProfiler path meet a real engine."""
    import json
    import subprocess

    work.mkdir(parents=True, exist_ok=True)
    lut = work / "lut-t4-demo.json"
    cmd = [sys.executable, "-m", "hadmc_deploy", "lut", "--arch", "hadmc_deploy.models.demo:demo_cnn", "--input-shape", "8,1,28,28",
           "--target", "t4", "--precision", "fp16", "--budget-minutes", f"{minutes:g}", "-o", str(lut)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out: dict[str, Any] = {"command": " ".join(cmd[2:]), "exit": proc.returncode, "last_line": (proc.stderr.strip().splitlines() or [""])[-1]}
    context = json.loads(lut.read_text()).get("context") if lut.exists() else None
    if not context:
        out["problem"] = f"no context in {lut} (exit {proc.returncode}: {out['last_line']})"
        return out
    rows = [{"plan": r["plan"], "predicted_ms": r.get("predicted_ms"), "measured_ms": r["measured_ms"]} for r in context.get("fitted_on", [])]
    out["fitted_on"] = rows
    off = [r for r in rows if r["predicted_ms"] and abs(r["predicted_ms"] / r["measured_ms"] - 1) > CONTEXT_TOLERANCE]
    if off:
        out["problem"] = ", ".join(f"{r['plan']} predicted {r['predicted_ms']:.3f} vs measured {r['measured_ms']:.3f} ms" for r in off)
    for r in rows:
        print(f"context fit: {r['plan']} predicted {r['predicted_ms']:.3f} / measured {r['measured_ms']:.3f} ms")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hadmc_deploy.backends import get
    from hadmc_deploy.ui import UI

    backend = get("tensorrt")
    ok, reason = backend.available()
    if not ok:
        print(f"check_tensorrt: cannot run: {reason}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    import tensorrt as trt  # type: ignore[import-not-found]

    from hadmc_deploy.backends.tensorrt_features import detect_features
    from hadmc_deploy.fileio import write_json_atomic, write_text_atomic

    start = time.perf_counter()
    ui = UI()
    features = detect_features(trt)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        print(f"check_tensorrt: unknown model(s) {unknown}; choose from {sorted(MODELS)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "command": "python tools/check_tensorrt.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": backend.describe_device(), "features": features.to_dict(), "host": platform.node(),
        "batches": [int(b) for b in args.batches.split(",")], "models": {},
    }
    for name in names:
        try:
            report["models"][name] = run_model(name, backend, features, args, start, ui)
        except Exception as exc:
            report["models"][name] = {"error": f"{type(exc).__name__}: {exc}", "variants": []}
    if args.context_minutes > 0:
        report["context"] = context_fit(Path(args.work_dir), args.context_minutes)
    report["elapsed_s"] = time.perf_counter() - start
    out = Path(args.out_dir)
    write_json_atomic(out / "tensorrt_check.json", report)
    write_text_atomic(out / "tensorrt_check.md", markdown(report))
    for model, res in report["models"].items():
        for r in res.get("ratios", []):
            cells = ", ".join(f"b{b} {x:.2f}x" for b, x in r["speedup"].items())
            print(f"{model}: {r['variant']} over {r['over']}: {cells}")
    print(f"wrote {out / 'tensorrt_check.json'} and {out / 'tensorrt_check.md'} in {report['elapsed_s']:.0f} s")
    failed = [f"{m}/{v['variant']}" for m, r in report["models"].items() for v in r.get("variants", []) if "error" in v]
    failed += [f"{m}/{v['variant']} profile ({v['profile_error']})" for m, r in report["models"].items()
               for v in r.get("variants", []) if "profile_error" in v]
    failed += [m for m, r in report["models"].items() if "error" in r]
    if report.get("context", {}).get("problem"):
        failed.append(f"context fit ({report['context']['problem']})")
    if failed:
        print(f"check_tensorrt: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
