"""Trace this machine's speed: one model run back to back for a while, then how repeatable
each latency estimator is on that trace.

Why: the latency model and the build's side-by-side timing need an estimator that two
measurements minutes apart agree on. This tool records a trace of single runs (a small CNN at
batch 32, 2 threads, and the same on 1 thread), prints the fastest and the median run per
2 s window (the machine's phases), then draws estimators at random start times from the
trace and prints how far two such estimates lie apart: the median over rounds, the fastest
of 3 rounds of 8 runs a few seconds apart (the context fit's timing), and the fastest of many
short rounds over 6 s (a 'floor': tried in the context fit and reverted, see docs/latency_model.md).
Then the same for longer windows (6, 30, 120 s where the trace is long enough): the fastest run,
the 25th percentile and the median of every run in a window, as a table measured over that long
would see the machine. While recording, it also prints the CPU time the hypervisor took from this
guest (steal, from /proc/stat) per 2 s window: a slow phase with no steal is one the guest cannot see.

    .venv/bin/python tools/trace_machine_speed.py --seconds 90
    .venv/bin/python tools/trace_machine_speed.py --seconds 300 --save /tmp/trace   # then, again from the files:
    .venv/bin/python tools/trace_machine_speed.py --load /tmp/trace
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.latency.repeat import measuring_session  # noqa: E402

#: (name, rounds, runs per round, seconds between round starts, statistic over the rounds' runs)
ESTIMATORS = (
    ("fastest of 3 rounds x 8 runs, 3 s apart", 3, 8, 3.0, "min_of_medians"),
    ("fastest of 7 rounds x 20 runs, back to back", 7, 20, 0.0, "min_of_medians"),
    ("floor: fastest 3-run round over 6 s", 60, 3, 0.1, "min_of_medians"),
    ("10th percentile of 3-run rounds over 6 s", 60, 3, 0.1, "p10"),
    ("25th percentile of 3-run rounds over 6 s", 60, 3, 0.1, "p25"),
    ("median of 3-run rounds over 6 s", 60, 3, 0.1, "p50"),
)


def steal_ticks() -> int | None:
    """CPU time stolen from this guest by the hypervisor, all CPUs, in clock ticks (None off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8])
    except (OSError, IndexError, ValueError):
        return None


def trace(seconds: float, threads: int, steal: list[tuple[float, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Single runs back to back for `seconds`: (start stamps in s, times in ms); `steal`, when given,
    gets (stamp, steal ticks so far) at the start and every 2 s."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.randn(32, 1, 28, 28)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(model, x, str(path), dynamo=False, input_names=["input"])
        sess = measuring_session(path, threads)
    feeds = {"input": x.numpy()}
    for _ in range(5):
        sess.run(None, feeds)
    start = time.perf_counter()
    stamps, times = [], []
    next_steal = 0.0
    while time.perf_counter() - start < seconds:
        if steal is not None and time.perf_counter() - start >= next_steal:
            ticks = steal_ticks()
            if ticks is not None:
                steal.append((time.perf_counter() - start, ticks))
            next_steal += 2.0
        a = time.perf_counter()
        sess.run(None, feeds)
        b = time.perf_counter()
        stamps.append(a - start)
        times.append((b - a) * 1000.0)
    return np.array(stamps), np.array(times)


def estimate(stamps: np.ndarray, times: np.ndarray, start: float, rounds: int, runs: int, gap: float, statistic: str) -> float | None:
    medians = []
    t = start
    for _ in range(rounds):
        i = bisect.bisect_left(stamps, t)
        seg = times[i : i + runs]
        if len(seg) < runs:
            return None
        medians.append(float(np.median(seg)))
        t = max(t + gap, stamps[min(i + runs, len(stamps) - 1)])
    if statistic == "min_of_medians":
        return min(medians)
    return float(np.percentile(medians, {"p10": 10, "p25": 25, "p50": 50}[statistic]))


#: window lengths (s) of the long-window estimators, and the statistics drawn over each window's runs.
WINDOWS = (6, 30, 120)
WINDOW_STATISTICS = (("fastest run", 0), ("25th percentile", 25), ("median", 50))


def window_repeatability(stamps: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> list[str]:
    """How far two estimates from windows of W seconds at random times lie apart, per W and statistic."""
    lines = []
    span = float(stamps[-1])
    for w in WINDOWS:
        if w > span / 2:
            continue
        for name, q in WINDOW_STATISTICS:
            ests = []
            for start in rng.uniform(0, span - w, 300):
                seg = times[(stamps >= start) & (stamps < start + w)]
                if len(seg):
                    ests.append(float(np.percentile(seg, q)))
            xs = np.array(ests)
            a, b = rng.choice(xs, 2000), rng.choice(xs, 2000)
            diff = 100 * np.abs(a - b) / np.minimum(a, b)
            lines.append(f"  {name} over {w} s windows: two estimates differ by {np.median(diff):.1f}% (median pair), "
                         f"{np.percentile(diff, 90):.1f}% (90th percentile); {np.mean(diff > 5):.0%} of pairs > 5%")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--save", metavar="PREFIX", help="also save each trace as PREFIX-<threads>t.npy (stamps, ms)")
    parser.add_argument("--load", metavar="PREFIX", help="analyse traces saved with --save instead of recording new ones")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    for threads in (2, 1):
        if args.load:
            stamps, times = np.load(f"{args.load}-{threads}t.npy")
            args.seconds = float(stamps[-1])
        else:
            stolen: list[tuple[float, int]] = []
            stamps, times = trace(args.seconds, threads, stolen)
        print(f"\n{threads} thread(s): {len(times)} runs over {args.seconds:.0f} s; per 2 s window: fastest / median run (ms)")
        windows = [(s, times[(stamps >= s) & (stamps < s + 2)]) for s in np.arange(0, args.seconds, 2)]
        print("  " + "  ".join(f"{s:.0f}s {w.min():.2f}/{np.median(w):.2f}" for s, w in windows if len(w)))
        if not args.load and len(stolen) > 1:
            per_window = np.diff([ticks for _, ticks in stolen])
            tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
            print(f"  steal: {int(per_window.sum())} ticks over the trace (1 tick = {tick_ms:g} ms of one CPU), per 2 s window: "
                  + " ".join(str(int(t)) for t in per_window))
        if args.save:
            np.save(f"{args.save}-{threads}t.npy", np.stack([stamps, times]))
        for name, rounds, runs, gap, statistic in ESTIMATORS:
            draws = [estimate(stamps, times, s, rounds, runs, gap, statistic) for s in rng.uniform(0, args.seconds * 0.7, 300)]
            xs = np.array([d for d in draws if d is not None])
            if len(xs) < 2:
                continue
            a, b = rng.choice(xs, 1000), rng.choice(xs, 1000)
            diff = 100 * np.abs(a - b) / np.minimum(a, b)
            print(f"  {name}: two estimates differ by {np.median(diff):.1f}% (median pair), {np.percentile(diff, 90):.1f}% (90th percentile); {np.mean(diff > 5):.0%} of pairs > 5%")
        print("\n".join(window_repeatability(stamps, times, rng)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
