"""How much the context fit's pairing of profiled kernels with layers changes its predictions, on the
same measurements: method v15 (names first, `ort_profile.pair_kernels`) against v14 (kernel keys in
order, `ort_profile.match_by_key`).

    .venv/bin/python tools/ab_kernel_pairing.py --cell demo:int8:32 --seeds 0,1 --clock cpu

The table's isolated layers are measured once; the context fit runs with v15's pairing while every
profile and whole-model time it takes is recorded; the v14 fit then replays exactly those
measurements (same rounds), so the two tables differ only in which layer each kernel's time went to.
Both then price the validation's random plans (`validate_latency_model.draw_plans`, one set of five
per seed) built as deployed and timed in 7 interleaved rounds (fastest round). Why a replay: two
fits minutes apart differ by the machine's drift, which here is as large as the effect measured.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from validate_latency_model import MODELS, draw_plans  # noqa: E402

import hadmc_deploy.latency.context_probe as context_probe  # noqa: E402
import hadmc_deploy.latency.ort_profile as ort_profile  # noqa: E402
from hadmc_deploy.backends import get as get_backend  # noqa: E402
from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency.auto import MeasureOptions, measure_table  # noqa: E402
from hadmc_deploy.latency.context import fit_context  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.kernel_pairing import match_by_key  # noqa: E402
from hadmc_deploy.latency.predictor import LutLatencyModel  # noqa: E402
from hadmc_deploy.targets import get_target  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS  # noqa: E402
from hadmc_deploy.ui import quiet_ui  # noqa: E402


class Recorder:
    """Wraps the probe's two measurements: records them per plan, or replays them in order."""

    def __init__(self) -> None:
        self.replaying = False
        self.records: dict[tuple[str, str], list] = {}
        self.cursor: dict[tuple[str, str], int] = {}
        self.real_profile, self.real_model_ms = ort_profile.profile_session, context_probe.whole_model_ms

    def _take(self, kind: str, path, measure):  # noqa: ANN001, ANN202
        key = (kind, Path(path).parent.name)  # the plan's artifact directory: "<plan>-art"
        if not self.replaying:
            value = measure()
            self.records.setdefault(key, []).append(value)
            return value
        i = self.cursor.get(key, 0)
        self.cursor[key] = i + 1
        return self.records[key][i]

    def install(self) -> None:
        ort_profile.profile_session = lambda path, **kw: self._take("profile", path, lambda: self.real_profile(path, **kw))
        context_probe.whole_model_ms = lambda path, *a, **kw: self._take("model", path, lambda: self.real_model_ms(path, *a, **kw))

    def remove(self) -> None:
        ort_profile.profile_session, context_probe.whole_model_ms = self.real_profile, self.real_model_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="demo:int8:32", help="model:precision:batch, as validate_latency_model.py --cells")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the random plans (five plans each)")
    parser.add_argument("--clock", default="cpu", choices=["wall", "cpu"])
    args = parser.parse_args()
    arch, precision, batch = args.cell.split(":")
    batch = int(batch)
    torch.manual_seed(0)
    build, chw = MODELS[arch]
    model = build().eval()
    shape = (batch, *chw)
    graph = trace(model, shape)
    backend = get_backend("onnxruntime")
    opts = MeasureOptions(clock=args.clock)
    with tempfile.TemporaryDirectory(prefix="hadmc-ab-pairing-") as tmp:
        isolated, _ = measure_table(model, graph, shape, get_target("cpu"), precision, batch, Path(tmp) / "lut.json",
                                    options=replace(opts, context=False), ui=quiet_ui())
        recorder = Recorder()
        recorder.install()

        def fit(rounds: int | None = None):  # noqa: ANN202
            table = copy.deepcopy(isolated)
            replayed = rounds is not None
            fit_context(table, model, graph, shape, backend, rounds=rounds or opts.context_rounds, threads=opts.threads, exporter=opts.exporter, clock=args.clock,
                        more_rounds_seconds=0.0 if replayed or args.clock != "cpu" else opts.cpu_context_seconds,
                        model_seconds=0.0 if replayed else opts.context_model_seconds, ui=quiet_ui())
            return table

        try:
            by_name = fit()
            recorder.replaying = True
            paired = ort_profile.pair_kernels
            ort_profile.pair_kernels = lambda nodes, names, kernels, graph=None: match_by_key(nodes, kernels)
            try:
                by_order = fit(rounds=by_name.context.fitted_on[0]["rounds"])
            finally:
                ort_profile.pair_kernels = paired
        finally:
            recorder.remove()
        models = {"v15 (names)": LutLatencyModel(by_name, source="v15"), "v14 (keys in order)": LutLatencyModel(by_order, source="v14")}
        plans = {"full": graph.full_widths()}
        for seed in (int(s) for s in args.seeds.split(",")):
            plans.update({f"{name}-s{seed}": widths for name, widths in draw_plans(graph, 5, by_name.alignment(), seed).items()})
        arts = {name: build_deployed_artifact(model, graph, widths, shape, backend, precision, Path(tmp), name)[1] for name, widths in plans.items()}
        rounds: dict[str, list[float]] = {name: [] for name in plans}
        for _ in range(WHOLE_MODEL_ROUNDS):
            for name, art in arts.items():
                rounds[name].append(context_probe.whole_model_ms(Path(art.model_path), batch, opts.threads, WHOLE_MODEL_RUNS, args.clock))
    measured = {name: min(r) for name, r in rounds.items()}
    errors: dict[str, dict[str, float]] = {label: {} for label in models}
    print(f"{args.cell}, clock {args.clock}: plans timed as deployed, {WHOLE_MODEL_ROUNDS} interleaved rounds (fastest)")
    for name, widths in plans.items():
        specs = [replace(s, precision=precision, batch=batch) for s in graph.layer_specs(widths)]
        cells = []
        for label, lm in models.items():
            predicted = lm.predict(specs).total_ms
            errors[label][name] = 100 * (predicted / measured[name] - 1)
            cells.append(f"{label} {predicted:.4f} ({errors[label][name]:+.1f}%)")
        print(f"  {name:16s} measured {measured[name]:.4f} ms | " + " | ".join(cells))
    held = [name for name in plans if name != "full"]
    print("  held-out plans' MAPE: " + ", ".join(f"{label} {statistics.fmean(abs(errors[label][n]) for n in held):.1f}%" for label in models) + f" ({len(held)} plans)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
