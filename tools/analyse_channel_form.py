"""Do a model's layers cost what their MACs say, or what their channels say? The analysis behind
`hadmc_deploy/latency/channel_form.py`.

Builds the context fit's own plans (`calibration_plans`, plus the two crossed plans for every model
here) and held-out plans (random widths on the step and random widths per group) of a model exactly
as a build deploys them, profiles each weighted layer in context (ONNX Runtime's profiler, fastest of
`--rounds`), and prices every held-out plan's layers from the fit's plans alone two ways: the
MACs-fraction curve the context fit builds, and the channel form (a + b*in + c*out + d*in*out, NNLS),
per layer and regime. Prints per layer the leave-one-out errors on the fit's plans (what
`choose_form` decides on) and the errors on the held-out plans; per way, the held-out plans' kernel
sums against what they measured.

    .venv/bin/python tools/analyse_channel_form.py --model grouped --precision fp32 --batch 1
    .venv/bin/python tools/analyse_channel_form.py --model demo96 --precision fp32 --batch 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
from pathlib import Path

import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from validate_latency_model import MODELS, draw_plans  # noqa: E402

from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency.alignment import WEIGHTED_OPS, counts_aligned  # noqa: E402
from hadmc_deploy.latency.channel_form import WIN_MARGIN, choose_form, fit_form, form_ms, leave_one_out_error  # noqa: E402
from hadmc_deploy.latency.context import macs_curve_ms as curve_ms  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.context_plans import CROSSED_FRACTIONS, calibration_plans, crossed_plan  # noqa: E402
from hadmc_deploy.latency.context_probe import OrtProbe  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.latency.ort_profile import source_weighted_nodes  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="grouped", choices=sorted(MODELS))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--plans", type=int, default=12, help="held-out plans of each kind")
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    build, chw = MODELS[args.model]
    model = build().eval()
    shape = (args.batch, *chw)
    graph = trace(model, shape)
    fit_plans = {"fit:" + k: v for k, v in calibration_plans(graph, args.step).items()}
    high, low = CROSSED_FRACTIONS
    fit_plans.setdefault("fit:crossed", crossed_plan(graph, high, low))
    fit_plans.setdefault("fit:crossed-reverse", crossed_plan(graph, low, high))
    rng = random.Random(5)
    held = dict(draw_plans(graph, args.plans, args.step, 1))
    for k in range(args.plans):
        held[f"per-group{k}"] = {g.id: max(g.granularity, rng.randrange(g.granularity, g.width + 1, max(g.granularity, 1))) for g in graph.prunable_groups}
    plans = {**fit_plans, **held}
    backend, probe = get_backend("onnxruntime"), OrtProbe(None, "wall")
    weighted = [i for i, layer in enumerate(graph.layers) if layer.spec.op in WEIGHTED_OPS]
    full_specs = graph.layer_specs()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hadmc-channel-form-") as tmp:
        built = {}
        for name, widths in plans.items():
            f, art = build_deployed_artifact(model, graph, widths, shape, backend, args.precision, Path(tmp), name.replace(":", "-"), exporter="fast")
            src = onnx.load(str(f))
            built[name] = (art, src, [n for n, _ in source_weighted_nodes(src)])
        for _ in range(args.rounds):
            for name, (art, src, nodes) in built.items():
                by_node = probe.node_times(art, src, args.batch, 8)
                t = [by_node[n] for n in nodes]
                times[name] = t if name not in times else [min(a, b) for a, b in zip(times[name], t, strict=True)]
    if any(len(t) != len(weighted) for t in times.values()):
        raise SystemExit("a plan's weighted nodes do not pair with the graph's weighted layers")
    sums = {way: {name: [0.0, 0.0] for name in held} for way in ("curve", "form", "chosen")}
    print(f"{args.model} {args.precision} batch {args.batch}: {len(fit_plans)} fit plans, {len(held)} held-out plans "
          f"(the form is chosen where its leave-one-out error is under {WIN_MARGIN:.0%} of the curve's and the shapes vary)")
    for j, i in enumerate(weighted):
        full = full_specs[i]

        def point(name: str, j: int = j, i: int = i, full=full) -> tuple[bool, tuple[float, float, float]]:  # noqa: ANN001
            spec = graph.layer_specs(plans[name])[i]
            aligned = counts_aligned(spec, full.in_channels, full.out_channels, args.step)
            return aligned, (spec.in_channels / full.in_channels, spec.out_channels / full.out_channels, times[name][j])

        fit_points: dict[bool, list] = {True: [], False: []}
        for name in fit_plans:
            aligned, p = point(name)
            fit_points[aligned].append(p)
        errors: dict[str, list[float]] = {"curve": [], "form": [], "chosen": []}
        chosen = {}
        for regime, pts in fit_points.items():
            pts = pts or fit_points[not regime]
            chosen[regime] = choose_form(pts, curve_ms)
            if len(pts) >= 5:
                print(f"  layer {i} {full.op} {'aligned' if regime else 'unaligned'} ({len(fit_points[regime])} plans): leave-one-out curve "
                      f"{100 * leave_one_out_error(pts, curve_ms):.1f}%, form {100 * leave_one_out_error(pts, lambda r, a, b: form_ms(fit_form(r), a, b)):.1f}% "
                      f"-> {'form' if chosen[regime] else 'curve'}")
        for name in held:
            regime, (ci, co, ms) = point(name)
            pts = fit_points[regime] or fit_points[not regime]
            by_curve = curve_ms(pts, ci, co)
            by_form = form_ms(fit_form(pts), ci, co) if len(pts) >= 4 else by_curve
            for way, p in (("curve", by_curve), ("form", by_form), ("chosen", form_ms(chosen[regime], ci, co) if chosen[regime] else by_curve)):
                errors[way].append(abs(p / ms - 1))
                sums[way][name][0] += p
                sums[way][name][1] += ms
        print(f"  layer {i} {full.op} {full.in_channels}->{full.out_channels} g{full.groups}, held-out plans: "
              + ", ".join(f"{way} {100 * statistics.fmean(e):.1f}%" for way, e in errors.items()))
    for way, per_plan in sums.items():
        print(f"{way:6s}: held-out plans' kernel sums {100 * statistics.fmean(abs(p / t - 1) for p, t in per_plan.values()):.1f}% off (MAPE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
