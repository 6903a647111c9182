"""Which whole-model statistic two measurements agree on: the deployed plans of a latency table's
context fit, timed as the build times them, and estimators compared on that trace.

Why: a latency table's whole-model times (its context fit), the build's latency check and decide
stage and the validation tool must use one statistic, and the one two measurements minutes apart
agree on. This tool builds the context fit's plans of a model (`context_plans.calibration_plans`,
deployed as `context_build.build_deployed_artifact` builds them), times them in interleaved rounds
exactly as a round is timed (a fresh session, two warm-up runs, at least WHOLE_MODEL_RUNS runs and
WHOLE_MODEL_SECONDS), keeps every run, then draws pairs of non-overlapping windows of N rounds from
the trace and prints how far each estimator's two values lie apart, per plan (absolute) and
relative to the full model of the same window (what a speedup sees):

- the fastest round's median (the build's statistic; over 7 rounds as the build takes),
- the expected fastest of 7 round medians (the context fit's estimate of it, `timing.expected_fastest`),
- the fastest run over the window (tried as method measured-v16 and reverted: docs/latency_model.md),
- the 5th / 10th / 25th percentile of every run in the window.

    .venv/bin/python tools/bench_round_statistic.py --precision fp32 --rounds 150
    .venv/bin/python tools/bench_round_statistic.py --precision int8 --rounds 100 --json docs/round_statistic.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hadmc_deploy.arch import build_arch  # noqa: E402
from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers  # noqa: E402
from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.context_plans import calibration_plans  # noqa: E402
from hadmc_deploy.latency.context_probe import whole_model_runs  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.timing import (  # noqa: E402
    WHOLE_MODEL_ROUNDS,
    WHOLE_MODEL_RUNS,
    WHOLE_MODEL_SECONDS,
    expected_fastest,
)

Rounds = list[list[float]]  # per round, every run's ms

ESTIMATORS: dict[str, Callable[[Rounds], float]] = {
    "fastest round's median (the build's)": lambda rs: min(statistics.median(r) for r in rs),
    "expected fastest of 7 round medians (the fit's)": lambda rs: expected_fastest([statistics.median(r) for r in rs]),
    "fastest run (measured-v16, reverted)": lambda rs: min(min(r) for r in rs),
    "5th percentile of runs": lambda rs: float(np.percentile(np.concatenate(rs), 5)),
    "10th percentile of runs": lambda rs: float(np.percentile(np.concatenate(rs), 10)),
    "25th percentile of runs": lambda rs: float(np.percentile(np.concatenate(rs), 25)),
}


def record(arch: str, input_shape: tuple[int, ...], precision: str, rounds: int, step: int, clock: list[float] | None = None) -> dict[str, Rounds]:
    """Every run of every context plan, round after round (one session alive at a time); `clock`
    gets each round's start in seconds from the first."""
    torch.manual_seed(0)
    model = build_arch(arch).eval()
    graph = trace(model, (1, *input_shape[1:]))
    plans = calibration_plans(graph, step)
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="hadmc-round-statistic-") as tmp:
        built = {n: build_deployed_artifact(model, graph, w, input_shape, backend, precision, Path(tmp), n, exporter="fast")[1] for n, w in plans.items()}
        runs: dict[str, Rounds] = {n: [] for n in built}
        started = time.monotonic()
        for _ in range(rounds):
            if clock is not None:
                clock.append(time.monotonic() - started)
            for name, art in built.items():  # a round as the context fit's OrtProbe.model_ms times it, every run kept
                runs[name].append(whole_model_runs(Path(art.model_path), input_shape[0], None, WHOLE_MODEL_RUNS, "wall",
                                                   artifact_disabled_optimizers(art.metadata), WHOLE_MODEL_SECONDS))
    return runs


def compare(runs: dict[str, Rounds], window: int, pairs: int, seed: int = 1) -> list[dict]:
    """Per estimator: how far two windows' values lie apart (median and 90th percentile, %)."""
    rng = random.Random(seed)
    total = len(runs["full"])
    starts = [(a, b) for a, b in (rng.sample(range(total - window + 1), 2) for _ in range(pairs)) if abs(a - b) >= window]
    rows = []
    for name, est in ESTIMATORS.items():
        absolute: list[float] = []
        relative: list[float] = []
        for a, b in starts:
            full_a, full_b = est(runs["full"][a : a + window]), est(runs["full"][b : b + window])
            for plan, rs in runs.items():
                x, y = est(rs[a : a + window]), est(rs[b : b + window])
                absolute.append(100 * abs(x / y - 1))
                if plan != "full":
                    relative.append(100 * abs((x / full_a) / (y / full_b) - 1))
        rows.append({"estimator": name, "window_rounds": window, "pairs": len(starts),
                     "abs_median_pct": statistics.median(absolute), "abs_p90_pct": float(np.percentile(absolute, 90)),
                     "speedup_median_pct": statistics.median(relative), "speedup_p90_pct": float(np.percentile(relative, 90))})
    return rows


def lag1_autocorrelation(xs: list[float]) -> float:
    """Correlation of each value with the next: near 0 when rounds vary independently, near 1
    when the machine holds a state over many rounds."""
    a = np.asarray(xs, dtype=float)
    if len(a) < 3 or float(np.std(a[:-1])) == 0.0 or float(np.std(a[1:])) == 0.0:
        return 0.0
    return float(np.corrcoef(a[:-1], a[1:])[0, 1])


def relative_trace(runs: dict[str, Rounds]) -> dict[str, dict[str, float]]:
    """Per plan, its round median over the same round's full-model median: 10th / 50th / 90th
    percentile and lag-1 autocorrelation over the trace (is a plan's cost relative to the full
    model a constant, noise round by round, or a state the machine holds for minutes?)."""
    full = [statistics.median(r) for r in runs["full"]]
    out = {}
    for plan, rs in runs.items():
        if plan == "full":
            continue
        ratio = [statistics.median(r) / f for r, f in zip(rs, full, strict=True)]
        p10, p50, p90 = (float(np.percentile(ratio, q)) for q in (10, 50, 90))
        out[plan] = {"p10": p10, "p50": p50, "p90": p90, "lag1": lag1_autocorrelation(ratio)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="hadmc_deploy.models.demo:demo_cnn")
    parser.add_argument("--input-shape", default="1,1,96,96", help="N,C,H,W (N: the batch timed)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--step", type=int, default=16, help="the context plans' channel step")
    parser.add_argument("--windows", default=f"{WHOLE_MODEL_ROUNDS},18", help="window lengths in rounds, comma-separated")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--json", type=Path, help="append this run's rows to a JSON list here")
    parser.add_argument("--trace", type=Path, help="write every round's median per plan, with its start time, here")
    args = parser.parse_args()
    shape = tuple(int(x) for x in args.input_shape.split(","))
    windows = [int(x) for x in args.windows.split(",")]
    if args.rounds < 2 * max(windows):
        parser.error(f"--rounds {args.rounds} holds no two separate windows of {max(windows)} rounds: give at least {2 * max(windows)}")
    started = time.strftime("%Y-%m-%d %H:%M")
    clock: list[float] = []
    runs = record(args.arch, shape, args.precision, args.rounds, args.step, clock)
    rows = [r for w in windows for r in compare(runs, w, args.pairs)]
    print(f"{args.arch} {args.input_shape} {args.precision}: {args.rounds} interleaved rounds of {len(runs)} plans ({started})")
    print(f"{'window':>6}  {'estimator':54s} {'two windows apart (median / p90)':>34} {'speedups apart':>16}")
    for r in rows:
        print(f"{r['window_rounds']:>6}  {r['estimator']:54s} {r['abs_median_pct']:15.1f}% / {r['abs_p90_pct']:5.1f}% {r['speedup_median_pct']:9.1f}% / {r['speedup_p90_pct']:4.1f}%")
    floor = {p: min(min(r) for r in rs) for p, rs in runs.items()}
    above = statistics.median(statistics.median(r) / floor[p] for p, rs in runs.items() for r in rs)
    print(f"a round's median over the fastest run of the whole trace, median round: {above:.3f}")
    relative = relative_trace(runs)
    print("each plan's round median over the same round's full model: p10 / p50 / p90, lag-1 autocorrelation")
    for plan, r in relative.items():
        print(f"  {plan:14s} {r['p10']:.3f} / {r['p50']:.3f} / {r['p90']:.3f}   {r['lag1']:+.2f}")
    if args.trace:
        args.trace.write_text(json.dumps({"measured_at": started, "arch": args.arch, "input_shape": list(shape), "precision": args.precision,
                                          "start_s": clock, "round_median_ms": {p: [statistics.median(r) for r in rs] for p, rs in runs.items()}}) + "\n")
        print(f"wrote {args.trace}")
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else []
        data.append({"measured_at": started, "arch": args.arch, "input_shape": list(shape), "precision": args.precision, "rounds": args.rounds,
                     "plans": list(runs), "round_median_over_fastest_run": above, "rows": rows, "relative_to_full": relative})
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
