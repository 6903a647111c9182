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
probe did not tell most plans' times in that round apart), and prints each plan's spread at both
thread counts, its median in rounds with and without a slowed vCPU, and how alike the random and the
fit's plans moved.

    .venv/bin/python tools/trace_thread_states.py --arch grouped --rounds 120 --json docs/thread_states_grouped.json
    .venv/bin/python tools/trace_thread_states.py --summarise docs/thread_states_grouped_1929.json
    .venv/bin/python tools/trace_thread_states.py --arch grouped --rounds 120 --shuffle --json docs/thread_states_grouped_shuffled_2128.json
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
#: a group of plans counts as slow in a round when its times average this multiple of their 10th percentiles.
SLOW_ROUND = 1.2


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


def summarise(trace: list[dict]) -> tuple[dict[str, dict[str, float]], float]:
    """Each plan's spread over the rounds at each thread count, and the fraction of rounds whose probe
    found a vCPU slowed."""
    summary = {key: spread([r["ms"][key] for r in trace]) for key in trace[0]["ms"]}
    return summary, sum(r["vcpu_slowdown"] > SLOWED for r in trace) / len(trace)


def co_movement(trace: list[dict], label: str = "default") -> dict[str, float] | None:
    """At one thread count: each plan's round time over its own 10th percentile, averaged over the
    validation's random plans and over the fit's plans; how alike the two move (correlation over
    rounds) and in how many rounds one group ran over SLOW_ROUND of its floor and the other did not."""
    def relative(names: list[str]) -> np.ndarray:
        return np.mean([np.array(t) / np.percentile(t, 10) for t in ([r["ms"][f"{n}@{label}"] for r in trace] for n in names)], axis=0)

    names = [key.rsplit("@", 1)[0] for key in trace[0]["ms"] if key.endswith(f"@{label}")]
    fit_names = [n for n in names if n.startswith("fit:")]
    random_names = [n for n in names if n != "full" and not n.startswith("fit:")]
    if not fit_names or not random_names:
        return None  # a graph without those fit plans (no step): nothing to compare
    fit, rand = relative(fit_names), relative(random_names)
    return {"correlation": float(np.corrcoef(rand, fit)[0, 1]), "random_slow_fit_not": int(np.sum((rand > SLOW_ROUND) & (fit <= SLOW_ROUND))),
            "fit_slow_random_not": int(np.sum((fit > SLOW_ROUND) & (rand <= SLOW_ROUND)))}


def order_effect(trace: list[dict], label: str = "default") -> list[float] | None:
    """With --shuffle: at one thread count, the median over plans and rounds of a plan's round time
    over its own median, by its position in the round (None without recorded orders). Why: the
    validation times its random plans first and the fit's plans last in every round, and a plan
    timed right after another (a session just closed) may run in another state than the first."""
    orders = [r.get("order", {}).get(label) for r in trace]
    if not all(orders):
        return None
    medians = {key: statistics.median(r["ms"][key] for r in trace) for key in trace[0]["ms"] if key.endswith(f"@{label}")}
    by_position: dict[int, list[float]] = {}
    for r, order in zip(trace, orders, strict=True):
        for pos, name in enumerate(order):
            key = f"{name}@{label}"
            by_position.setdefault(pos, []).append(r["ms"][key] / medians[key])
    return [statistics.median(by_position[p]) for p in sorted(by_position)]


def report(result: dict) -> None:
    """The tables this tool prints, from a run's result (also from its --json file: --summarise)."""
    trace, summary = result["rounds"], result["summary"]
    print(f"{result['arch']} {result['precision']} b{result['batch']}, {len(trace)} rounds ({result['measured_at']}); "
          f"a vCPU >{100 * SLOWED:.0f}% slower in {100 * result['slowed_fraction']:.0f}% of the probes")
    print(f"{'plan':22s} {'threads':8s} {'p10 ms':>8s} {'p50 ms':>8s} {'p90 ms':>8s} {'p90/p10':>8s} {'p50, vCPU slowed / not':>24s}")
    slowed = [r["vcpu_slowdown"] > SLOWED for r in trace]
    for key, s in summary.items():
        name, label = key.rsplit("@", 1)
        split = [[r["ms"][key] for r, flag in zip(trace, slowed, strict=True) if flag == want] for want in (True, False)]
        by_probe = " / ".join("-" if not part else f"{statistics.median(part):.3f}" for part in split)
        print(f"{name:22s} {label:8s} {s['p10_ms']:8.3f} {s['p50_ms']:8.3f} {s['p90_ms']:8.3f} {s['p90_over_p10_pct']:7.0f}% {by_probe:>24s}")
    move = co_movement(trace)
    if move is not None:
        print(f"random vs fit plans at the default threads: correlation {move['correlation']:.2f} over {len(trace)} rounds; "
              f"rounds over {SLOW_ROUND}x their floor, random not fit: {move['random_slow_fit_not']}, fit not random: {move['fit_slow_random_not']}")
    for label in ("default", "one"):
        effect = order_effect(trace, label)
        if effect is not None:
            print(f"shuffled order, {label} threads: a plan's time over its median by its position in the round: "
                  + ", ".join(f"{e:.3f}" for e in effect))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="grouped", choices=sorted(MODELS))
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--step", type=int, default=16, help="the plans' channel step (the machine's measured step)")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--runs", type=int, default=20, help="runs per plan and round (their median is the round's time)")
    parser.add_argument("--json", type=Path, help="write the rounds and the summary here")
    parser.add_argument("--summarise", type=Path, metavar="JSON", help="print the tables of an earlier run's --json file, measure nothing")
    parser.add_argument("--shuffle", action="store_true", help="time the plans in a fresh random order every round (recorded) instead of in a fixed one")
    args = parser.parse_args()
    if args.summarise:
        report(json.loads(args.summarise.read_text()))
        return 0

    model, shape, graph = cell_model(args.arch, args.batch)
    fit = calibration_plans(graph, args.step)
    plans = {"full": graph.full_widths(), **draw_plans(graph, 5, args.step, 0),
             **{f"fit:{n}": fit[n] for n in ("aligned50", "offgrid45") if n in fit}}
    backend = get_backend("onnxruntime")
    threads = {"default": None, "one": 1}
    trace = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="hadmc-thread-states-") as tmp:
        arts = {n: Path(build_deployed_artifact(model, graph, w, shape, backend, args.precision, Path(tmp), n.replace(":", "_"))[1].model_path)
                for n, w in plans.items()}
        started = time.time()
        for i in range(args.rounds):
            speeds = vcpu_speeds()
            row = {"t_s": round(time.time() - started, 2), "vcpu_slowdown": max(speeds) / min(speeds) - 1, "ms": {}}
            for label, count in threads.items():
                names = list(rng.permutation(list(arts))) if args.shuffle else list(arts)
                if args.shuffle:
                    row.setdefault("order", {})[label] = [str(n) for n in names]
                for name in names:
                    row["ms"][f"{name}@{label}"] = statistics.median(whole_model_runs(arts[name], args.batch, count, args.runs))
            trace.append(row)
            print(f"round {i}: vCPU slowdown {100 * row['vcpu_slowdown']:.0f}%, full {row['ms']['full@default']:.3f} ms", flush=True)
    result = {"arch": args.arch, "precision": args.precision, "batch": args.batch, "input": list(shape), "plans": plans,
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "rounds": trace}
    result["summary"], result["slowed_fraction"] = summarise(trace)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
