"""Per layer, a table's price of a plan against the plan's profiled time as deployed; optionally the
plan built by both exporters, its kernels compared and its whole model timed side by side.

    .venv/bin/python tools/diagnose_plan_layers.py --cell demo:fp32:32 --lut LUT.json --plans unaligned01,offgrid90 [--exporters]

Why: a validation cell's miss (`tools/validate_latency_model.py`) is either the machine (a plan
timed in a slow phase during the fit) or the model (a layer priced off what it costs in context).
This prices each weighted layer of the named plans with the saved table (the context fit's
per-layer times, as a build prices them) and profiles the same plan built as the build deploys it
(ONNX Runtime's profiler, the fastest of `--rounds` rounds per kernel), so the layers the model
misprices are named. Plans: the validation's random ones by name (`aligned00`, `unaligned01`, ...,
drawn as the validation draws them with `--seed`), the context fit's (`full`, `offgrid90`, ...).
With `--exporters`, each plan is also built with the TorchScript exporter (what the context fit
uses where its kernels match) and the deploy exporter, and both are timed interleaved.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_latency_model import cell_model, draw_plans  # noqa: E402

from hadmc_deploy.backends import get  # noqa: E402
from hadmc_deploy.latency.alignment import WEIGHTED_OPS  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact, kernel_ops  # noqa: E402
from hadmc_deploy.latency.context_measure import kernel_key, match_by_key, source_weighted_nodes  # noqa: E402
from hadmc_deploy.latency.context_plans import calibration_plans  # noqa: E402
from hadmc_deploy.latency.context_probe import probe_for, whole_model_ms  # noqa: E402
from hadmc_deploy.latency.lut import LatencyTable  # noqa: E402
from hadmc_deploy.latency.predictor import LutLatencyModel, _regime_and_size  # noqa: E402


def profiled_layers(model, graph, widths, shape, precision, backend, workdir: Path, name: str, rounds: int) -> tuple[list[float], float]:  # noqa: ANN001
    """(each weighted layer's fastest profiled time, the whole model's ms) of the plan as deployed."""
    weighted = [i for i, layer in enumerate(graph.layers) if layer.spec.op in WEIGHTED_OPS]
    keys = [(i, kernel_key("Conv" if graph.layers[i].spec.op != "linear" else "Gemm", [0, 0, *graph.layers[i].spec.kernel])) for i in weighted]
    path, art = build_deployed_artifact(model, graph, widths, shape, backend, precision, workdir, name)
    source = onnx.load(str(path), load_external_data=False)
    nodes = source_weighted_nodes(source)
    node_of = {keys[a][0]: nodes[b][0] for a, b in match_by_key(keys, nodes)}
    probe = probe_for(backend, None, "wall")
    best: list[float] | None = None
    for _ in range(rounds):
        by_node = probe.node_times(art, source, shape[0], 20)
        times = [by_node[node_of[i]] for i in weighted]
        best = times if best is None else [min(a, b) for a, b in zip(best, times, strict=True)]
    return best or [], probe.model_ms(art, shape[0], 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", required=True, help="model:precision:batch, as the validation names cells")
    ap.add_argument("--lut", required=True, help="the cell's saved table (the validation's --workdir holds them)")
    ap.add_argument("--plans", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--exporters", action="store_true")
    args = ap.parse_args()
    arch, precision, batch = args.cell.split(":")
    model, shape, graph = cell_model(arch, int(batch))
    table = LatencyTable.from_dict(json.loads(Path(args.lut).read_text()), args.lut)
    predictor = LutLatencyModel(table, source=args.lut)
    plans = {"full": graph.full_widths(), **draw_plans(graph, 5, table.alignment(), args.seed)}
    if table.context is not None:
        plans.update(calibration_plans(graph, table.context.step))
    backend = get("onnxruntime")
    weighted = [i for i, layer in enumerate(graph.layers) if layer.spec.op in WEIGHTED_OPS]
    with tempfile.TemporaryDirectory(prefix="hadmc-diagnose-") as tmp:
        for name in args.plans.split(","):
            widths = plans[name]
            specs = [replace(s, precision=precision, batch=int(batch)) for s in graph.layer_specs(widths)]
            priced = predictor.predict(specs)
            profiled, whole = profiled_layers(model, graph, widths, shape, precision, backend, Path(tmp), name, args.rounds)
            print(f"\n{name}: priced {priced.total_ms:.3f} ms, profiled kernels {sum(profiled):.3f} ms, whole model {whole:.3f} ms\n")
            print("| layer | op | channels | regime | size | priced ms | profiled ms | priced / profiled |")
            print("|---|---|---|---|---:|---:|---:|---:|")
            for k, i in enumerate(weighted):
                spec = specs[i]
                regime, size = _regime_and_size(table.context.factors[i], spec, table.context.step) if table.context else ("", 0.0)
                print(f"| {graph.layers[i].name} | {spec.op} | {spec.in_channels}->{spec.out_channels} | {regime} | {size:.3f} | "
                      f"{priced.per_layer_ms[i]:.4f} | {profiled[k]:.4f} | {priced.per_layer_ms[i] / profiled[k]:.2f} |")
            if args.exporters:
                arts = {exporter: build_deployed_artifact(model, graph, widths, shape, backend, precision, Path(tmp), f"{name}-{exporter}", exporter=exporter)[1]
                        for exporter in ("fast", "deploy")}
                ops = {exporter: kernel_ops(art, int(batch), None) for exporter, art in arts.items()}
                same = ops["fast"] == ops["deploy"]
                differ = "" if same else f" (TorchScript only: {dict(Counter(ops['fast']) - Counter(ops['deploy']))}, deploy only: {dict(Counter(ops['deploy']) - Counter(ops['fast']))})"
                times: dict[str, list[float]] = {e: [] for e in arts}
                for _ in range(args.rounds):
                    for exporter, art in arts.items():
                        times[exporter].append(whole_model_ms(Path(art.model_path), int(batch), None, 20))
                print(f"\nexports: {'the same kernels' if same else 'other kernels'}{differ}; fastest of {args.rounds} interleaved rounds: "
                      + ", ".join(f"{'TorchScript' if e == 'fast' else 'deploy'} {min(t):.3f} ms" for e, t in times.items()))


if __name__ == "__main__":
    main()
