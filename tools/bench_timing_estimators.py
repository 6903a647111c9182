"""How repeatable is one whole-model latency estimate? A few runs against a stretch of time.

Builds each model's full-width plan exactly as a build deploys it and estimates its latency,
again and again, with each estimator (every estimate: the minimum over fresh sessions of each
session's median); prints, per model and precision, the median estimate and how much the
estimates move (standard deviation and range, % of the mean). The estimators are interleaved
so load from other processes hits them alike.

    .venv/bin/python tools/bench_timing_estimators.py --models demo,demo96,grouped --repeats 12
    .venv/bin/python tools/bench_timing_estimators.py --rounds-bias --models demo,demo96,grouped,resnet18 --repeats 10
    .venv/bin/python tools/bench_timing_estimators.py --processes 12 --models demo96,grouped --repeats 7

Why: `hadmc_deploy.timing` (a stretch of at least WHOLE_MODEL_SECONDS per measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from validate_latency_model import MODELS  # noqa: E402

from hadmc_deploy.graph.trace import trace  # noqa: E402
from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.context_probe import whole_model_ms  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, WHOLE_MODEL_SECONDS  # noqa: E402


def estimators(path: Path, batch: int) -> dict[str, Callable[[], float]]:
    def est(sessions: int, runs: int, seconds: float) -> Callable[[], float]:
        return lambda: min(whole_model_ms(path, batch, None, runs, min_seconds=seconds) for _ in range(sessions))

    return {
        "3 sessions x 8 runs": est(3, 8, 0.0),
        "4 sessions x 5 runs": est(4, 5, 0.0),
        f"3 sessions x {1000 * WHOLE_MODEL_SECONDS:.0f} ms": est(3, 8, WHOLE_MODEL_SECONDS),
        f"4 sessions x {1000 * WHOLE_MODEL_SECONDS:.0f} ms": est(4, 5, WHOLE_MODEL_SECONDS),
    }


def rounds_bias(path: Path, batch: int, repeats: int) -> list[float]:
    """Per repeat: the fastest of the first 3 of 7 rounds over the fastest of all 7 (each round a
    fresh session's median over at least WHOLE_MODEL_SECONDS): how far a 3-round estimate sits above
    the build's 7-round one."""
    ratios = []
    for _ in range(repeats):
        rounds = [whole_model_ms(path, batch, None, WHOLE_MODEL_RUNS) for _ in range(WHOLE_MODEL_ROUNDS)]
        ratios.append(min(rounds[:3]) / min(rounds))
    return ratios


def time_rounds(path: Path, batch: int, rounds: int) -> list[float]:
    """Each round a fresh session's median over at least WHOLE_MODEL_SECONDS (the build's round)."""
    return [whole_model_ms(path, batch, None, 8) for _ in range(rounds)]


def process_estimates(path: Path, batch: int, processes: int, rounds: int) -> list[list[float]]:
    """The build's rounds in `processes` fresh Python processes, one after another: a process's
    memory layout is its own, so this shows what a single process's estimate cannot."""
    out = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, __file__, "--time-model", str(path), "--batch", str(batch), "--repeats", str(rounds)],
                              check=True, capture_output=True, text=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,demo96,grouped", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--rounds-bias", action="store_true", help=f"instead: the fastest of 3 rounds against the fastest of {WHOLE_MODEL_ROUNDS}")
    parser.add_argument("--processes", type=int, default=0,
                        help="instead: the build's estimator (fastest of --repeats rounds) in this many fresh processes")
    parser.add_argument("--time-model", help=argparse.SUPPRESS)  # one worker process of --processes
    parser.add_argument("--json", help="also append the results to this JSON list of runs")
    args = parser.parse_args()
    if args.time_model:
        print(json.dumps(time_rounds(Path(args.time_model), args.batch, args.repeats)))
        return 0
    torch.set_num_threads(1)
    backend = get_backend("onnxruntime")
    rows = []
    if not args.rounds_bias:
        print(f"{'model':10s} {'prec':5s} {'estimator':22s} {'median ms':>10s} {'sd %':>6s} {'range %':>8s}")
    with tempfile.TemporaryDirectory(prefix="hadmc-estimators-") as tmp:
        for arch in args.models.split(","):
            build, chw = MODELS[arch]
            torch.manual_seed(0)
            model = build().eval()
            shape = (args.batch, *chw)
            graph = trace(model, shape)
            for precision in args.precisions.split(","):
                _, art = build_deployed_artifact(model, graph, graph.full_widths(), shape, backend, precision, Path(tmp), f"{arch}-{precision}")
                if args.processes:
                    per_process = process_estimates(Path(art.model_path), args.batch, args.processes, args.repeats)
                    mins = [min(r) for r in per_process]
                    mid = statistics.median(mins)
                    rows.append({"model": arch, "precision": precision, "batch": args.batch, "estimator": f"min of {args.repeats} rounds, per process",
                                 "median_ms": mid, "range_pct": 100 * (max(mins) - min(mins)) / min(mins),
                                 "over_5pct_off": sum(abs(m / mid - 1) > 0.05 for m in mins), "rounds": per_process})
                    print(f"{arch:10s} {precision:5s} min of {args.repeats} rounds in {args.processes} processes: median {mid:.4f} ms, "
                          f"range {rows[-1]['range_pct']:.1f}%, {rows[-1]['over_5pct_off']} more than 5% off the median; per process: "
                          + " ".join(f"{m:.3f}" for m in mins))
                    continue
                if args.rounds_bias:
                    r = rounds_bias(Path(art.model_path), args.batch, args.repeats)
                    rows.append({"model": arch, "precision": precision, "batch": args.batch, "estimator": f"min of 3 / min of {WHOLE_MODEL_ROUNDS} rounds",
                                 "mean_ratio": statistics.fmean(r), "max_ratio": max(r), "ratios": r})
                    print(f"{arch:10s} {precision:5s} min of 3 / min of {WHOLE_MODEL_ROUNDS} rounds: mean {statistics.fmean(r):.3f} max {max(r):.3f}")
                    continue
                ests = estimators(Path(art.model_path), args.batch)
                values: dict[str, list[float]] = {k: [] for k in ests}
                for _ in range(args.repeats):
                    for name, est in ests.items():
                        values[name].append(est())
                for name, v in values.items():
                    mean = statistics.fmean(v)
                    row = {"model": arch, "precision": precision, "batch": args.batch, "estimator": name, "median_ms": statistics.median(v),
                           "sd_pct": 100 * statistics.pstdev(v) / mean, "range_pct": 100 * (max(v) - min(v)) / min(v), "estimates": v}
                    rows.append(row)
                    print(f"{arch:10s} {precision:5s} {name:22s} {row['median_ms']:10.4f} {row['sd_pct']:6.1f} {row['range_pct']:8.1f}")
    if args.json:  # runs accumulate: the machine's noise differs from run to run
        out = Path(args.json)
        runs = json.loads(out.read_text()) if out.exists() else []
        runs.append({"measured_at": time.strftime("%Y-%m-%d %H:%M"), "load_average": [round(x, 1) for x in os.getloadavg()], "repeats": args.repeats, "rows": rows})
        out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
