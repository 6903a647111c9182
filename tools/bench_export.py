"""Measure the export path's choices on this machine and write docs/export.md (+ docs/export.json).

Three questions, each answered side by side in one run:

  1. Exporters: does torch.onnx's dynamo exporter (torch.export based) and the legacy
     TorchScript exporter each export the demo CNN, ResNet-18, ResNet-50 and MobileNetV2
     (random init, dynamic batch), and does the result verify in ONNX Runtime?
  2. Simplifiers: onnxslim vs onnxsim on each raw exported graph: success, node counts,
     BatchNormalization left, time, and verification after simplification.
  3. ORT offline optimization: an artifact's model.onnx saved through ORT's optimizer at
     basic / extended / all vs the plain copy, loaded the way deployment loads it
     (ORT_ENABLE_ALL): session start-up time and latency, interleaved rounds, medians,
     as ratios to the plain copy (timings on this shared machine move 20-30%).

    .venv/bin/python tools/bench_export.py                 # everything (about 5 minutes on 2 cores)
    .venv/bin/python tools/bench_export.py --quick         # demo + resnet18 only, fewer runs
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy import onnx_passes  # noqa: E402
from hadmc_deploy.backends import BuildRequest, OrtBuildOptions, get  # noqa: E402
from hadmc_deploy.backends.onnxruntime import DEFAULT_OFFLINE_LEVEL, OPT_LEVELS, make_session, random_feeds  # noqa: E402
from hadmc_deploy.export import EXPORTERS, _first_line, _quiet_torch_loggers, simplify_with  # noqa: E402
from hadmc_deploy.fileio import write_json_atomic, write_text_atomic  # noqa: E402
from hadmc_deploy.models.demo import demo_cnn  # noqa: E402
from hadmc_deploy.models.mobilenet import mobilenet_v2  # noqa: E402
from hadmc_deploy.models.resnet import resnet18, resnet50  # noqa: E402
from hadmc_deploy.onnx_verify import verify  # noqa: E402
from hadmc_deploy.targets import cpu_model_name, cpu_profile, detect_cpu_isa  # noqa: E402
from hadmc_deploy.ui import UI  # noqa: E402

MODELS = {
    "demo": (lambda: demo_cnn(), (1, 1, 28, 28)),
    "resnet18": (lambda: resnet18(), (1, 3, 224, 224)),
    "resnet50": (lambda: resnet50(), (1, 3, 224, 224)),
    "mobilenet_v2": (lambda: mobilenet_v2(), (1, 3, 224, 224)),
}
SIMPLIFIERS = ("onnxslim", "onnxsim")
RTOL, ATOL = 1e-3, 1e-4


def bn_count(model: onnx.ModelProto) -> int:
    return onnx_passes.op_counts(model).get("BatchNormalization", 0)


def verify_err(model: torch.nn.Module, graph: onnx.ModelProto, x: np.ndarray, ui: UI) -> dict:
    v = verify(model, graph, x, "random", static_batch=None, rtol=RTOL, atol=ATOL, ui=ui)
    return {"passed": v.passed, "max_abs_err": v.max_abs_err, "max_rel_err": v.max_rel_err}


def measure_exporters(names: list[str], workdir: Path, ui: UI) -> tuple[list[dict], dict[str, dict[str, Path]]]:
    rows, raw_paths = [], {}
    for name in names:
        build, shape = MODELS[name]
        torch.manual_seed(0)
        model = build().eval()
        x = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
        example = torch.from_numpy(np.resize(x, (2, *shape[1:])))
        raw_paths[name] = {}
        for exporter, fn in EXPORTERS.items():
            path = workdir / f"{name}_{exporter}.onnx"
            row = {"model": name, "exporter": exporter}
            start = time.perf_counter()
            try:
                with redirect_stdout(io.StringIO()), _quiet_torch_loggers(True):
                    fn(model, example, path, 18, True, ["output"])
                row["seconds"] = time.perf_counter() - start
                graph = onnx.load(str(path))
                dims = graph.graph.input[0].type.tensor_type.shape.dim
                row.update({
                    "ok": True,
                    "nodes": len(graph.graph.node),
                    "bn_left": bn_count(graph),
                    "dynamic_batch": bool(dims[0].dim_param),
                    "data_files": sorted(p.name for p in workdir.glob(f"{path.name}*.data")),
                    **verify_err(model, graph, x, ui),
                })
                raw_paths[name][exporter] = path
            except Exception as exc:  # the measurement: which exporter fails, and why
                row.update({"ok": False, "seconds": time.perf_counter() - start, "error": _first_line(exc)})
            rows.append(row)
            ui.log(f"  {name} {exporter}: {'ok' if row['ok'] else row['error']} ({row['seconds']:.1f} s)")
    return rows, raw_paths


def measure_simplifiers(raw_paths: dict[str, dict[str, Path]], ui: UI) -> list[dict]:
    rows = []
    for name, per_exporter in raw_paths.items():
        build, shape = MODELS[name]
        torch.manual_seed(0)
        model = build().eval()
        x = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
        for exporter, path in per_exporter.items():
            raw = onnx.load(str(path))
            for simplifier in SIMPLIFIERS:
                row = {"model": name, "exporter": exporter, "simplifier": simplifier, "nodes_before": len(raw.graph.node)}
                start = time.perf_counter()
                try:
                    with redirect_stdout(io.StringIO()):
                        out = simplify_with(simplifier, raw)
                    row["seconds"] = time.perf_counter() - start
                    onnx.checker.check_model(out)
                    dims = out.graph.input[0].type.tensor_type.shape.dim
                    row.update({"ok": True, "nodes_after": len(out.graph.node), "bn_left": bn_count(out), "dynamic_batch": bool(dims[0].dim_param), **verify_err(model, out, x, ui)})
                except Exception as exc:
                    row.update({"ok": False, "seconds": time.perf_counter() - start, "error": _first_line(exc)})
                rows.append(row)
                ui.log(f"  {name}/{exporter} {simplifier}: {'ok' if row['ok'] else row['error']}")
    return rows


def _reader(x: np.ndarray):  # noqa: ANN202 - onnxruntime is imported lazily
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[i : i + 1]} for i in range(len(x))])

        def get_next(self):  # noqa: ANN202
            return next(self.items, None)

    return Reader()


def measure_offline(raw_paths: dict[str, dict[str, Path]], names: list[str], workdir: Path, rounds: int, runs: int, ui: UI) -> list[dict]:
    """Per model and precision: build one artifact per offline level, then time them in interleaved rounds."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    backend = get("onnxruntime")
    levels = [None, *OPT_LEVELS[1:]]
    rows = []
    for name in names:
        src = raw_paths[name].get("dynamo") or raw_paths[name]["legacy"]
        simplified = workdir / f"{name}_simplified.onnx"
        onnx.save(simplify_with("onnxslim", onnx.load(str(src))), str(simplified))
        _, shape = MODELS[name]
        sources = {"fp32": simplified}
        x = np.random.default_rng(1).standard_normal((8, *shape[1:])).astype(np.float32)

        form = cpu_profile().int8_form
        qdq = workdir / f"{name}_qdq.onnx"
        act = QuantType.QUInt8 if form == "qdq_u8s8" else QuantType.QInt8
        quantize_static(str(simplified), str(qdq), _reader(x), quant_format=QuantFormat.QDQ, activation_type=act, weight_type=QuantType.QInt8, per_channel=True)
        sources[f"int8 ({form}, ORT quantize_static)"] = qdq
        for precision, path in sources.items():
            arts = {}
            for level in levels:
                art = backend.build(BuildRequest(path, "int8" if precision.startswith("int8") else "fp32", workdir / f"art_{name}_{precision[:4]}_{level}",
                                                  backend.default_target(), ort=OrtBuildOptions(offline_opt=level)))
                arts[level] = art
            startup = {level: [] for level in levels}
            samples = {level: [] for level in levels}
            for _ in range(rounds):
                for level, art in arts.items():
                    t0 = time.perf_counter()
                    sess = make_session(art.model_path)
                    startup[level].append((time.perf_counter() - t0) * 1000)
                    feeds = random_feeds(sess, batch=1)
                    for _ in range(3):
                        sess.run(None, feeds)
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        sess.run(None, feeds)
                        samples[level].append((time.perf_counter() - t0) * 1000)
            base_p50, base_start = float(np.median(samples[None])), float(np.median(startup[None]))
            for level in levels:
                p50, start = float(np.median(samples[level])), float(np.median(startup[level]))
                rows.append({
                    "model": name,
                    "precision": precision,
                    "offline": level or "none (copy)",
                    "p50_ms": p50,
                    "latency_ratio": p50 / base_p50,
                    "startup_ms": start,
                    "startup_ratio": start / base_start,
                    "nodes": len(onnx.load(str(arts[level].model_path), load_external_data=False).graph.node),
                    "samples": len(samples[level]),
                })
            ui.log(f"  {name} {precision}: " + ", ".join(f"{r['offline']} {r['latency_ratio']:.2f}x" for r in rows[-len(levels):]))
    return rows


# -- report ---------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return f"{v:.2e}" if v < 0.01 else f"{v:.3g}"


def render(data: dict, command: str) -> str:
    env = data["environment"]
    lines = [
        "# Export and ONNX Runtime backend: measured choices",
        "",
        f"Generated by `{command}` (tools/bench_export.py); do not edit by hand.",
        "",
        f"Machine: {env['cpu']} ({env['isa']}, {env['cores']} logical CPUs); torch {env['torch']}, onnx {env['onnx']}, "
        f"onnxruntime {env['onnxruntime']}, onnxslim {env['onnxslim']}, onnxsim {env['onnxsim']}. Models are random-init; "
        f"verification is ONNX Runtime vs PyTorch on 3 random inputs (batch 3, the graph was traced at 2), rtol {RTOL:g}, atol {ATOL:g}. "
        "The machine is shared with other jobs"
        + (f" (load average {env['loadavg_at_start'][0]:.1f} at the start)" if env.get("loadavg_at_start") else "")
        + ": absolute times are inflated and only same-run ratios mean anything.",
        "",
        "## 1. Exporters (opset 18, dynamic batch)",
        "",
        "| model | exporter | ok | time s | nodes | BN left | dynamic batch | max abs err | verified |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in data["exporters"]:
        if r["ok"]:
            lines.append(f"| {r['model']} | {r['exporter']} | yes | {r['seconds']:.1f} | {r['nodes']} | {r['bn_left']} | {r['dynamic_batch']} | {_fmt(r['max_abs_err'])} | {r['passed']} |")
        else:
            lines.append(f"| {r['model']} | {r['exporter']} | **no**: {r['error'][:80]} | {r['seconds']:.1f} | | | | | |")
    ex = data["exporters"]
    ok = {e: sum(r["ok"] and r["passed"] for r in ex if r["exporter"] == e) for e in EXPORTERS}
    n = len({r["model"] for r in ex})
    speed = [r1["seconds"] / r2["seconds"] for r1 in ex for r2 in ex if r1["model"] == r2["model"] and r1["exporter"] == "dynamo" and r2["exporter"] == "legacy" and r1["ok"] and r2["ok"]]
    lines += [
        "",
        f"Dynamo exported and verified {ok['dynamo']}/{n} models, legacy {ok['legacy']}/{n}. "
        + (f"Dynamo took {min(speed):.1f}-{max(speed):.1f}x the legacy exporter's time (first call includes loading onnxscript). " if speed else "")
        + "`export_onnx` uses dynamo first and falls back to legacy with the reason recorded (a data-dependent branch, for example, is rejected by torch.export; tests/test_export_onnx.py exercises it).",
        "",
        "## 2. Simplifiers (on each raw exported graph)",
        "",
        "| model | exporter | simplifier | ok | nodes before -> after | BN left | dynamic batch | time s | max abs err |",
        "|---|---|---|---|---|---:|---|---:|---:|",
    ]
    for r in data["simplifiers"]:
        if r["ok"]:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['simplifier']} | yes | {r['nodes_before']} -> {r['nodes_after']} | {r['bn_left']} | {r['dynamic_batch']} | {r['seconds']:.2f} | {_fmt(r['max_abs_err'])} |")
        else:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['simplifier']} | **no**: {r['error'][:80]} | {r['nodes_before']} | | | {r['seconds']:.2f} | |")
    si = data["simplifiers"]
    sok = {s: (sum(r["ok"] and r["passed"] for r in si if r["simplifier"] == s), sum(r["simplifier"] == s for r in si)) for s in SIMPLIFIERS}
    lines += [
        "",
        f"onnxslim succeeded (and verified) on {sok['onnxslim'][0]}/{sok['onnxslim'][1]} graphs, onnxsim on {sok['onnxsim'][0]}/{sok['onnxsim'][1]}. "
        "`export_onnx` tries onnxslim first (pure Python, keeps the symbolic batch dim) and onnxsim second, records which ran, "
        "and folds any Conv+BatchNormalization left with its own pass (hadmc_deploy/onnx_passes.py).",
        "",
        "## 3. ONNX Runtime offline optimization (artifact's model.onnx), batch 1",
        "",
        "Every variant is loaded with ORT_ENABLE_ALL, as the artifact is deployed; ratios are to the plain copy, medians over "
        f"{data['offline_rounds']} interleaved rounds of {data['offline_runs']} runs.",
        "",
        "| model | precision | saved at | nodes | p50 ms | latency ratio | session start ms | start ratio |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in data["offline"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['offline']} | {r['nodes']} | {r['p50_ms']:.2f} | {r['latency_ratio']:.2f} | {r['startup_ms']:.1f} | {r['startup_ratio']:.2f} |")
    lines.append("")
    off = data["offline"]
    lat = {lvl: [r["latency_ratio"] for r in off if r["offline"] == lvl] for lvl in OPT_LEVELS[1:]}
    start = {lvl: [r["startup_ratio"] for r in off if r["offline"] == lvl] for lvl in OPT_LEVELS[1:]}
    lines.append(
        "Latency ratios per saved level (min-max over the rows): "
        + "; ".join(f"{lvl} {min(v):.2f}-{max(v):.2f}" for lvl, v in lat.items() if v)
        + ". Session start-up ratios: "
        + "; ".join(f"{lvl} {min(v):.2f}-{max(v):.2f}" for lvl, v in start.items() if v)
        + ". A latency ratio inside the machine's 20-30% noise means the level changes nothing at run time: ORT applies "
        "the same fusions online when the session starts, so what offline optimization can buy is start-up time. "
        f"The artifact default (`DEFAULT_OFFLINE_LEVEL` in backends/onnxruntime.py) is `{DEFAULT_OFFLINE_LEVEL or 'None: a plain copy'}`: "
        "a saved optimized graph holds com.microsoft fused ops tied to the ORT version (and at `all` this CPU's NCHWc layout), "
        "a cost worth paying only where the table shows a gain. `build(BuildRequest(..., ort=OrtBuildOptions(offline_opt='extended')))` opts in; the "
        "optimized copy must then match the source within rtol 1e-3/atol 1e-4 (fp32) or the build fails."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--offline-models", nargs="+", default=["demo", "resnet18"], choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="demo and resnet18 only, 3 rounds of 10 runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "export.md"))
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json beside it (no new measurements)")
    args = parser.parse_args()
    out = Path(args.out)
    if args.render_only:
        data = json.loads(out.with_suffix(".json").read_text())
        write_text_atomic(out, render(data, data["command"]))
        print(f"rewrote {out} from {out.with_suffix('.json')}")
        return
    if args.quick:
        args.models, args.offline_models, args.rounds, args.runs = ["demo", "resnet18"], ["demo", "resnet18"], 3, 10
    torch.set_num_threads(1)
    ui = UI(quiet=False)
    import onnxruntime
    import onnxsim
    import onnxslim

    data: dict = {
        "environment": {
            "cpu": cpu_model_name(), "isa": detect_cpu_isa(), "cores": __import__("os").cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxslim": onnxslim.__version__, "onnxsim": onnxsim.__version__,
            "loadavg_at_start": list(__import__("os").getloadavg()),
        },
        "offline_rounds": args.rounds,
        "offline_runs": args.runs,
    }
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        workdir = Path(tmp)
        ui.log("1. exporters")
        data["exporters"], raw = measure_exporters(args.models, workdir, UI(quiet=True))
        for row in data["exporters"]:
            ui.log(json.dumps(row))
        ui.log("2. simplifiers")
        data["simplifiers"] = measure_simplifiers(raw, UI(quiet=True))
        ui.log("3. ORT offline optimization")
        data["offline"] = measure_offline(raw, [m for m in args.offline_models if m in raw], workdir, args.rounds, args.runs, ui)
    command = " ".join([".venv/bin/python tools/bench_export.py", *sys.argv[1:]])
    data["command"] = command
    write_text_atomic(out, render(data, command))
    write_json_atomic(out.with_suffix(".json"), data)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
