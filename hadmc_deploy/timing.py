"""Timed samples of a call: a number of runs, and at least a stretch of time.

A whole fast model (the demo CNN at 28x28 runs in ~0.1 ms) timed over a handful of
runs is a sample of the machine's jitter as much as of the model. Twelve estimates
of it (each the fastest of 3 fresh sessions' medians) moved sd 4.0% (FP32) / 6.7%
(INT8) from 8 runs a session and 2.9% / 2.2% from 40 ms of runs; in another run,
with the machine noisier, 9.0% / 13.4% and 9.0% / 11.2%: the stretch removes the
runs' sampling noise, not the machine's (`tools/bench_timing_estimators.py`,
docs/timing_estimators.json). Slow models are unaffected: their runs outlast the
stretch anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

#: timed seconds per whole-model measurement where the caller asks for a stretch: what the
#: latency tables' context fit, the build's latency check and decide stage, and the validation
#: tool all take, so their estimates are alike.
WHOLE_MODEL_SECONDS = 0.04
#: interleaved rounds of a whole-model comparison; a model's time is its fastest round's median.
#: The build's latency check and decide stage, the latency tables' context fit and the validation
#: tool all take this many, so a prediction and the measurement it is checked against are the same
#: estimator: the fastest of 3 rounds sat 0.5-3.3% above the fastest of 7 on average, up to 27%
#: (the demo CNN in INT8, 0.09 ms), over four models in FP32 and INT8
#: (`tools/bench_timing_estimators.py --rounds-bias`, docs/timing_estimators.json).
WHOLE_MODEL_ROUNDS = 7
#: runs per round at least (with WHOLE_MODEL_SECONDS of them): the same in all four. The decide stage
#: took 25 (half the evaluate stage's --runs) until a ResNet-18 build at 224 spent 9.8 s deciding among
#: six variants; its seven rounds at 8 runs took 4.1-4.4 s instead of 8.4-9.0 s, and the speedups they
#: measured moved no more between three repeats (2.3% against 11.7% at 25 runs, pruned-mixed over
#: baseline-int8; a scratch A/B, /tmp/exp14/decide_runs.py, 2026-12-02): the machine's noise, not the runs' count,
#: is what moves a round of a slow model, and a fast one runs WHOLE_MODEL_SECONDS anyway.
WHOLE_MODEL_RUNS = 8
#: runs at most, however fast the call (a 10 us model would otherwise run 4000 times per 40 ms).
MAX_TIMED_RUNS = 2000


def timed_samples(call: Callable[[], object], runs: int, min_seconds: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                  max_runs: int = MAX_TIMED_RUNS) -> list[float]:
    """ms per call on `clock`: `runs` calls, more while under `min_seconds` of wall time have passed
    (at most `max_runs` in all)."""
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < runs or (len(samples) < max_runs and time.perf_counter() - started < min_seconds):
        t0 = clock()
        call()
        samples.append((clock() - t0) * 1000.0)
    return samples


def runs_for(min_seconds: float, per_run_ms: float, runs: int) -> int:
    """How many runs fill `min_seconds` at `per_run_ms` each (never fewer than `runs`, at most MAX_TIMED_RUNS)."""
    if min_seconds <= 0 or per_run_ms <= 0:
        return runs
    return max(runs, min(MAX_TIMED_RUNS, int(min_seconds * 1000.0 / per_run_ms + 0.999)))


def expected_fastest(values: list[float], of: int = WHOLE_MODEL_ROUNDS) -> float:
    """The expected fastest of `of` rounds, estimated from all `values` (per-round times): the
    average, over every `of`-subset of them, of its fastest (an unbiased U-statistic; with exactly
    `of` values it is their fastest). Why: the fastest of 7 is what a build's latency check
    measures, and as one draw it is noisy; from 42 rounds of four deployed demo CNN plans at 96x96
    (INT8, batch 1) in each of four processes, the fastest of 7 rounds moved 3.5-4.7% (coefficient
    of variation) between draws, this estimate from 21 rounds 1.7-2.4% about the same mean
    (0.3-1.0% apart; scratch /tmp/exp16/rounds.py, 2026-12-02)."""
    if not values:
        raise ValueError("no rounds")
    xs, n = sorted(values), len(values)
    of = max(1, min(of, n))
    total = math.comb(n, of)
    # the i-th smallest (0-based) is the fastest of exactly comb(n - 1 - i, of - 1) subsets
    return sum(x * math.comb(n - 1 - i, of - 1) for i, x in enumerate(xs[: n - of + 1])) / total
