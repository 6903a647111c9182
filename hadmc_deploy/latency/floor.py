"""The unloaded ("floor") latency of several models: many short interleaved rounds over a span.

Why: on these shared 2-vCPU machines speed comes in phases (`tools/trace_machine_speed.py`
runs one model back to back for 90 s and prints the fastest and the median run per 2 s
window). In one trace the fastest run per window went from 4.3 to 7.6 ms on 2 threads and
from 8.7 to 15.6 ms on one, in phases lasting seconds to tens of seconds (presumably the
host's other tenants). Load only ever adds time, so each model's time here is its fastest
round's median, the rounds short (3 runs), every model in every round (a phase hits all
alike), and the rounds spread over seconds so that a fast phase is likely to be among them.
That is the latency the model predicts: the machine's speed when nothing else takes it.

What it does not fix: a window of seconds can sit wholly in one phase, and phases last
longer than that. Two such estimates at random times of one trace differed by 4.6-16% at the
median pair, depending on the moment; the fastest of 3 rounds of 8 runs (the earlier
timing) by 5.3-14%, the median by 5.3-18%; no estimator over 6 s was repeatable to 5% on
these machines. `split_half` states each run's own reproducibility.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hadmc_deploy.ui import UI, quiet_ui

#: times `n` runs of one model and returns their median (ms).
RoundTimer = Callable[[int], float]

#: defaults: runs per round, rounds and span at least, span at most (s).
RUNS_PER_ROUND = 3
MIN_ROUNDS = 7
MIN_SPAN_S = 6.0
MAX_SPAN_S = 30.0


@dataclass
class FloorTiming:
    """One model's rounds: `floor_ms` is the fastest round's median."""

    round_ms: list[float] = field(default_factory=list)
    span_s: float = 0.0

    @property
    def floor_ms(self) -> float:
        return min(self.round_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.round_ms)

    @property
    def split_half(self) -> float:
        """Relative difference of the floors of the even and the odd rounds: how reproducible
        the floor itself is in this run (0 with one round)."""
        even, odd = self.round_ms[0::2], self.round_ms[1::2]
        if not even or not odd:
            return 0.0
        return abs(min(even) - min(odd)) / min(min(even), min(odd))

    def to_dict(self) -> dict[str, Any]:
        return {"floor_ms": self.floor_ms, "median_ms": self.median_ms, "rounds": len(self.round_ms), "span_s": round(self.span_s, 2), "split_half": self.split_half}


def floor_times(
    timers: dict[str, RoundTimer],
    *,
    runs: int = RUNS_PER_ROUND,
    min_rounds: int = MIN_ROUNDS,
    min_span_s: float = MIN_SPAN_S,
    max_span_s: float = MAX_SPAN_S,
    label: str = "timing (interleaved, fastest round)",
    ui: UI | None = None,
) -> dict[str, FloorTiming]:
    """Round after round, every model `runs` times, until at least `min_rounds` rounds and
    `min_span_s` seconds have passed (or `max_span_s`, after two rounds at least)."""
    ui = ui or quiet_ui()
    if not timers:
        return {}
    out = {name: FloorTiming() for name in timers}
    start = time.monotonic()
    with ui.progress(label, None) as bar:
        while True:
            for name, timer in timers.items():
                out[name].round_ms.append(timer(runs))
            bar.advance()
            elapsed = time.monotonic() - start
            done = len(out[next(iter(out))].round_ms)
            if (done >= min_rounds and elapsed >= min_span_s) or (done >= 2 and elapsed >= max_span_s):
                break
    for timing in out.values():
        timing.span_s = elapsed
    return out


def session_timer(session: Any, feeds: dict[str, Any], clock: Callable[[], float] = time.perf_counter) -> RoundTimer:
    """A RoundTimer over an ONNX Runtime session (already warmed up)."""

    def timer(n: int) -> float:
        samples = []
        for _ in range(n):
            begin = clock()
            session.run(None, feeds)
            samples.append((clock() - begin) * 1000.0)
        return statistics.median(samples)

    return timer
