"""INT8 on the CPU target, side by side: FP32, our QDQ forms x calibration methods, ORT's and NNCF's quantizers.

    .venv/bin/python tools/bench_int8.py [--models resnet18,resnet50,fmnist] [--rounds 15] [--out docs/int8.md]

For each model every variant is built, then latencies are measured INTERLEAVED (round
r runs every variant in turn), so load from other processes on this shared machine
hits all variants alike; we report medians and ratios to FP32 from the same run.
ResNet-18/50 are random-init and calibrated on random-normal data: fine for SPEED,
meaningless for accuracy. The Fashion-MNIST demo model is trained here and scored on
the real 10k test set. Writes docs/int8.md and docs/int8.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.calibration.verify_qdq import compare_outputs, ort_session, run_batches
from hadmc_deploy.data import ArrayDataset, load_data
from hadmc_deploy.export import export_onnx
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic
from hadmc_deploy.targets import cpu_model_name, detect_cpu_isa
from hadmc_deploy.ui import UI

ROOT = Path(__file__).resolve().parents[1]


# -- models -----------------------------------------------------------------------------
def build_models(names: list[str], calib_n: int, epochs: int, ui: UI) -> list[dict]:
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.resnet import resnet18, resnet50
    from hadmc_deploy.train import evaluate_accuracy, train_classifier

    out = []
    rng = np.random.default_rng(0)
    for name in names:
        if name in ("resnet18", "resnet50"):
            torch.manual_seed(0)
            model = {"resnet18": resnet18, "resnet50": resnet50}[name]().eval()
            x = rng.standard_normal((calib_n, 3, 224, 224)).astype(np.float32)
            calib = ArrayDataset(x, np.zeros(len(x), np.int64), "random-normal")
            out.append({"name": name, "model": model, "shape": (1, 3, 224, 224), "calib": calib, "test": None, "note": "random init, random-normal calibration: speed only"})
        elif name == "fmnist":
            train = load_data("builtin:fashion-mnist:train")
            test = load_data("builtin:fashion-mnist:test")
            torch.manual_seed(0)
            model = train_classifier(demo_cnn(), train, epochs=epochs, ui=ui)
            ui.log(f"demo_cnn trained {epochs} epoch(s): torch test accuracy {evaluate_accuracy(model, test):.2f}%")
            out.append({"name": "demo_cnn (Fashion-MNIST)", "model": model, "shape": (1, 1, 28, 28), "calib": train.subset(512), "test": test,
                        "note": f"trained {epochs} epoch(s) on fashion-mnist train; calibrated on 512 train images; accuracy on the 10k test set"})
        else:
            raise SystemExit(f"unknown model {name!r}")
    return out


# -- variants ---------------------------------------------------------------------------
class _Reader:
    """onnxruntime CalibrationDataReader over the same calibration images (for ORT's own quantize_static)."""

    def __init__(self, x: np.ndarray, name: str) -> None:
        self.items = iter([{name: x[i : i + 1]} for i in range(len(x))])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def ort_default_quantize(float_path: Path, x: np.ndarray, out: Path) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(str(float_path), str(out), _Reader(x, "input"), quant_format=QuantFormat.QDQ)  # library defaults
    return out


def nncf_quantize(float_path: Path, x: np.ndarray, out: Path) -> Path | None:
    try:
        import nncf
    except ImportError:
        return None
    model = onnx.load(str(float_path))
    dataset = nncf.Dataset([x[i : i + 1] for i in range(len(x))], lambda item: {"input": item})
    quantized = nncf.quantize(model, dataset, subset_size=len(x))
    onnx.save(quantized, str(out))
    return out


def build_variants(entry: dict, workdir: Path, methods: list[str], ui: UI) -> list[dict]:
    shape = entry["shape"]
    float_path = Path(export_onnx(entry["model"], shape, workdir / "fp32.onnx", verify_inputs=entry["calib"].x[:8], ui=ui).path)
    variants = [{"name": "FP32", "path": float_path, "kind": "float"}]
    calib = entry["calib"]
    for method in methods:
        t0 = time.perf_counter()
        ranges = collect_ranges(float_path, calib, method=method, num_samples=len(calib), ui=ui)
        calib_s = time.perf_counter() - t0
        for form, placement in (("qdq_u8s8", "onnxruntime"), ("qdq_s8s8", "onnxruntime"), ("qdq_s8s8", "tensorrt")):
            if placement == "tensorrt" and method != "entropy":
                continue  # the TensorRT placement is shown once: it is for TensorRT, not ORT
            path = write_qdq(float_path, ranges, workdir / f"{method}_{form}_{placement}.onnx", form=form, placement=placement)
            label = f"ours {form.split('_')[1].upper()} {method}" + (" (TensorRT placement)" if placement == "tensorrt" else "")
            variants.append({"name": label, "path": path, "kind": "ours", "calib_s": round(calib_s, 1)})
    x = calib.x[: min(len(calib), 128)]
    variants.append({"name": "ORT quantize_static defaults", "path": ort_default_quantize(float_path, x, workdir / "ort_default.onnx"), "kind": "peer"})
    nncf_path = nncf_quantize(float_path, calib.x[:300], workdir / "nncf.onnx")
    if nncf_path is not None:
        variants.append({"name": "NNCF quantize (defaults)", "path": nncf_path, "kind": "peer"})
    return variants


# -- measurement ------------------------------------------------------------------------
def measure(variants: list[dict], x1: np.ndarray, rounds: int, per_round: int, ui: UI) -> None:
    sessions = [ort_session(v["path"]) for v in variants]
    for s in sessions:  # warm-up
        for _ in range(3):
            s.run(None, {"input": x1})
    times: list[list[float]] = [[] for _ in variants]
    with ui.progress("latency (interleaved)", rounds) as task:
        for _ in range(rounds):
            for k, s in enumerate(sessions):
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x1})
                    times[k].append(time.perf_counter() - t0)
            task.advance()
    for v, t in zip(variants, times, strict=True):
        arr = np.asarray(t) * 1000
        v["p50_ms"] = float(np.median(arr))
        v["p90_ms"] = float(np.percentile(arr, 90))
        v["runs"] = len(arr)


def score(variants: list[dict], entry: dict) -> None:
    data = entry["test"] if entry["test"] is not None else ArrayDataset(entry["calib"].x[:64], entry["calib"].y[:64], "calib")
    reference = run_batches(ort_session(variants[0]["path"]), data.x, 256)
    for v in variants:
        logits = reference if v is variants[0] else run_batches(ort_session(v["path"]), data.x, 256)
        check = compare_outputs(reference, logits)
        v["top1_agreement"] = check.top1_agreement
        v["rel_err"] = check.rel_err
        if entry["test"] is not None:
            v["accuracy"] = 100.0 * float((logits.argmax(1) == data.y).mean())


# -- report -----------------------------------------------------------------------------
def render(results: list[dict], meta: dict) -> str:
    lines = [
        "# INT8 on the CPU target (ONNX Runtime)",
        "",
        "Generated by `tools/bench_int8.py`; do not edit by hand. Command:",
        "",
        f"    {meta['command']}",
        "",
        f"Machine: {meta['cpu']} ({meta['cores']} cores, ISA `{meta['isa']}`), onnxruntime {meta['onnxruntime']}, "
        f"nncf {meta['nncf']}, torch {meta['torch']}. Sessions: CPU EP, ORT_ENABLE_ALL, default intra-op threads "
        f"({meta['cores']}), batch 1. Latency: {meta['rounds']} interleaved rounds x {meta['per_round']} runs per variant, "
        f"median (p50) and p90. The machine is shared with other jobs (load average {meta['load_before']} before, "
        f"{meta['load_after']} after): compare ratios within a table, not absolute milliseconds across runs.",
        "",
        "Variants: *ours U8S8* = `write_qdq(form='qdq_u8s8')` (uint8 activations, int8 per-channel weights, ORT's full "
        "Q/DQ placement); *ours S8S8* = int8 activations, same placement; *(TensorRT placement)* = the `qdq_s8s8` graph "
        "we hand to TensorRT (Q/DQ only on conv/gemm inputs and residual adds), shown to explain why ORT needs its own "
        "form; *ORT quantize_static defaults* = `quantize_static(model, out, reader, QuantFormat.QDQ)` "
        "(int8/int8, per-tensor, MinMax); *NNCF* = `nncf.quantize(onnx_model, dataset)` defaults.",
        "",
    ]
    for res in results:
        has_acc = any("accuracy" in v for v in res["variants"])
        lines += [f"## {res['model']}", "", res["note"], ""]
        head = "| variant | p50 ms | p90 ms | speedup vs FP32 | top-1 agreement | max err / range |"
        sep = "|---|---:|---:|---:|---:|---:|"
        if has_acc:
            head += " accuracy % | delta (points) |"
            sep += "---:|---:|"
        lines += [head, sep]
        fp32 = res["variants"][0]
        for v in res["variants"]:
            row = f"| {v['name']} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {fp32['p50_ms'] / v['p50_ms']:.2f}x | {v['top1_agreement']:.1%} | {v['rel_err']:.3f} |"
            if has_acc:
                row += f" {v['accuracy']:.2f} | {v['accuracy'] - fp32['accuracy']:+.2f} |"
            lines.append(row)
        lines.append("")
    lines += ["## Summary", ""] + [f"- {s}" for s in meta["summary"]] + [""]
    return "\n".join(lines)


def summarize(results: list[dict]) -> list[str]:
    out = []
    for res in results:
        vs = {v["name"]: v for v in res["variants"]}
        fp32 = vs["FP32"]["p50_ms"]
        u8 = min((v for v in res["variants"] if v["name"].startswith("ours U8S8")), key=lambda v: v["p50_ms"])
        s8 = min((v for v in res["variants"] if v["name"].startswith("ours S8S8") and "TensorRT" not in v["name"]), key=lambda v: v["p50_ms"])
        text = f"{res['model']}: ours U8S8 {fp32 / u8['p50_ms']:.2f}x over FP32, S8S8 {fp32 / s8['p50_ms']:.2f}x"
        if "NNCF quantize (defaults)" in vs:
            text += f", NNCF {fp32 / vs['NNCF quantize (defaults)']['p50_ms']:.2f}x"
        text += f", ORT defaults {fp32 / vs['ORT quantize_static defaults']['p50_ms']:.2f}x"
        if "accuracy" in vs["FP32"]:
            best = max((v for v in res["variants"] if v["kind"] == "ours" and "TensorRT" not in v["name"]), key=lambda v: v["accuracy"])
            text += f"; FP32 accuracy {vs['FP32']['accuracy']:.2f}%, best of ours {best['name']} {best['accuracy']:.2f}% ({best['accuracy'] - vs['FP32']['accuracy']:+.2f} points)"
        out.append(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,resnet50,fmnist")
    parser.add_argument("--methods", default="entropy,minmax,percentile", help="calibration methods for the Fashion-MNIST model")
    parser.add_argument("--resnet-methods", default="entropy", help="methods for the speed-only ResNets (ranges do not change speed)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--calib-samples", type=int, default=32, help="random-normal calibration images for the ResNets")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "int8.md"))
    args = parser.parse_args(argv)
    ui = UI()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    results = []
    for entry in build_models(args.models.split(","), args.calib_samples, args.epochs, ui):
        methods = (args.methods if entry["test"] is not None else args.resnet_methods).split(",")
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
            ui.log(f"[bold]{entry['name']}[/bold]: building variants")
            variants = build_variants(entry, Path(tmp), methods, ui)
            x1 = entry["calib"].x[:1]
            measure(variants, x1, args.rounds, args.per_round, ui)
            score(variants, entry)
        for v in variants:
            v["path"] = Path(v["path"]).name
        results.append({"model": entry["name"], "note": entry["note"], "variants": variants})
        ui.log(summarize(results)[-1])
    import nncf
    import onnxruntime

    meta = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute() else sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu_model_name(), "cores": os.cpu_count(), "isa": detect_cpu_isa(), "onnxruntime": onnxruntime.__version__,
        "nncf": nncf.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "rounds": args.rounds, "per_round": args.per_round, "load_before": load_before,
        "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    meta["summary"] = summarize(results)
    out = Path(args.out)
    write_text_atomic(out, render(results, meta))
    write_json_atomic(out.with_suffix(".json"), {"meta": meta, "results": results})
    ui.out.print("\n".join(meta["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
