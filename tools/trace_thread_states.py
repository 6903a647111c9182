"""How a model's plans move with the machine's state at two threads and at one, side by side.

Why: on the shared 2-vCPU machines here a plan's whole-model time at two threads (the session's
default) moves in phases while, in a quiet spell, the same plan at one thread barely moves (the
grouped CNN, 18:03, 120 rounds: 28-53% from the 10th to the 90th percentile at two threads, 3-4% at
one; docs/thread_states_grouped.json; in a busy hour one thread moved 12-44% too,
docs/thread_states_grouped_1929.json). A phase need not move every plan alike: in a trace at 17:52 one
slowed that model's pruned plans by 24-39% and its full model by 6% for about 20 s, and a table
fitted in one phase and validated in the other reads that as a model miss which the full model's
range over rounds (the validation's noise floor) does not show. This tool times the same plans (the
full model, the validation's random plans, two of the context fit's) at the default threads and at
one thread in every round, with a per-vCPU probe before each round (a pure-Python loop pinned to
each CPU in turn: at times one vCPU runs it at about half speed, but in the trace above a round's
probe did not predict that round's times), and prints each plan's spread at both thread counts.

    .venv/bin/python tools/trace_thread_states.py --arch grouped --rounds 120 --json docs/thread_states_grouped.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from validate_latency_model import MODELS, cell_model, draw_plans  # noqa: E402

from hadmc_deploy.latency.context_build import build_deployed_artifact  # noqa: E402
from hadmc_deploy.latency.context_plans import calibration_plans  # noqa: E402
from hadmc_deploy.latency.context_probe import whole_model_runs  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402

#: a vCPU counts as slowed when the probe runs this much slower on it than on the fastest one.
SLOWED = 0.15


def _spin(n: int) -> None:
    s = 0
    for i in range(n):
        s += i * i


def vcpu_speeds() -> list[float]:
    """Seconds of the same pure-Python loop pinned to each CPU this process may use (then unpinned)."""
    cpus = sorted(os.sched_getaffinity(0))
    times = []
    try:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            _spin(300)  # lands on the CPU before it is timed
            start = time.perf_counter()
            _spin(3000)
            times.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, set(cpus))
    return times


def spread(values: list[float]) -> dict[str, float]:
    p10, p50, p90 = (float(np.percentile(values, q)) for q in (10, 50, 90))
    return {"p10_ms": p10, "p50_ms": p50, "p90_ms": p90, "p90_over_p10_pct": 100 * (p90 / p10 - 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="grouped", choices=sorted(MODELS))
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--step", type=int, default=16, help="the plans' channel step (the machine's measured step)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20, help="runs per plan and round (their median is the round's time)")
    parser.add_argument("--json", type=Path, help="write the rounds and the summary here")
    args = parser.parse_args()

    model, shape, graph = cell_model(args.arch, args.batch)
    fit = calibration_plans(graph, args.step)
    plans = {"full": graph.full_widths(), **draw_plans(graph, 5, args.step, 0),
             **{f"fit:{n}": fit[n] for n in ("aligned50", "offgrid45") if n in fit}}
    backend = get_backend("onnxruntime")
    threads = {"default": None, "one": 1}
    trace = []
    with tempfile.TemporaryDirectory(prefix="hadmc-thread-states-") as tmp:
        arts = {n: Path(build_deployed_artifact(model, graph, w, shape, backend, args.precision, Path(tmp), n.replace(":", "_"))[1].model_path)
                for n, w in plans.items()}
        started = time.time()
        for i in range(args.rounds):
            speeds = vcpu_speeds()
            row = {"t_s": round(time.time() - started, 2), "vcpu_slowdown": max(speeds) / min(speeds) - 1, "ms": {}}
            for label, count in threads.items():
                for name, path in arts.items():
                    row["ms"][f"{name}@{label}"] = statistics.median(whole_model_runs(path, args.batch, count, args.runs))
            trace.append(row)
            print(f"round {i}: vCPU slowdown {100 * row['vcpu_slowdown']:.0f}%, full {row['ms']['full@default']:.3f} ms", flush=True)
    summary = {key: spread([r["ms"][key] for r in trace]) for key in trace[0]["ms"]}
    slowed = sum(r["vcpu_slowdown"] > SLOWED for r in trace) / len(trace)
    print(f"{args.arch} {args.precision} b{args.batch}, {len(trace)} rounds; a vCPU >{100 * SLOWED:.0f}% slower in {100 * slowed:.0f}% of the probes")
    print(f"{'plan':22s} {'threads':8s} {'p10 ms':>8s} {'p50 ms':>8s} {'p90 ms':>8s} {'p90/p10':>8s}")
    for key, s in summary.items():
        name, label = key.rsplit("@", 1)
        print(f"{name:22s} {label:8s} {s['p10_ms']:8.3f} {s['p50_ms']:8.3f} {s['p90_ms']:8.3f} {s['p90_over_p10_pct']:7.0f}%")
    if args.json:
        result = {"arch": args.arch, "precision": args.precision, "batch": args.batch, "input": list(shape), "plans": plans,
                  "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "slowed_fraction": slowed,
                  "summary": summary, "rounds": trace}
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
