"""Built artifacts timed side by side: interleaved rounds, one session alive at a time.

Why one module: the decide stage judges its candidates this way, and the evaluate stage confirms
this way, before the report advises FP32 over INT8 at some batch, what one pass of single timings
suggested (on this shared 2-vCPU machine single timings of the demo's pruned variants at batch 1
put INT8 at 0.173 ms against FP32's 0.155, where 10 interleaved rounds gave 0.080 against 0.089).
"""

from __future__ import annotations

import statistics
from typing import Any

from hadmc_deploy.backends import Artifact, LatencyStats, get
from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, WHOLE_MODEL_SECONDS

#: interleaved rounds over the artifacts compared.
ROUNDS = WHOLE_MODEL_ROUNDS


def time_interleaved(ctx: BuildContext, rows: list[dict[str, Any]], batch: int, stats_out: dict[str, dict[str, Any]] | None = None) -> tuple[dict[str, float], float]:
    """Per variant (`rows`: name, backend, artifact) the p50 of its fastest interleaved round (load
    only adds time; on a shared 2-vCPU machine whole rounds run on one core when the other is
    taken, and a median over rounds mixes the two regimes), and the noise: the median relative
    spread of each variant's round p50s around its own median, at most 10%. With `stats_out`,
    each variant's latency over the rounds (`round_stats`) goes there."""
    rounds = interleaved_rounds(ctx, rows, batch)
    if stats_out is not None:
        stats_out.update({n: round_stats(v) for n, v in rounds.items()})
    return fastest_and_noise(rounds)


def interleaved_rounds(ctx: BuildContext, rows: list[dict[str, Any]], batch: int, rounds: int = ROUNDS) -> dict[str, list[LatencyStats]]:
    """Each variant's `rounds` interleaved rounds, one session alive at a time."""
    timed: dict[str, list[LatencyStats]] = {r["name"]: [] for r in rows}
    loaded = {r["name"]: (get(r["backend"]), Artifact.load(ctx.path(r["artifact"]))) for r in rows}
    with ctx.ui.progress(f"timing {len(rows)} candidates side by side (batch {batch})", rounds * len(rows)) as bar:
        for _ in range(rounds):
            for name, (backend, artifact) in loaded.items():
                timed[name].append(backend.benchmark(artifact, batch=batch, warmup=2, runs=WHOLE_MODEL_RUNS, min_seconds=WHOLE_MODEL_SECONDS))
                backend.release_sessions()  # one session alive at a time, as deployed and as the table timed
                bar.advance()
    return timed


def fastest_and_noise(rounds: dict[str, list[LatencyStats]]) -> tuple[dict[str, float], float]:
    """(each variant's fastest round p50, the noise) of `interleaved_rounds`' rounds (see `time_interleaved`)."""
    per_round = {n: [s.p50_ms for s in v] for n, v in rounds.items()}
    medians = {n: statistics.median(v) for n, v in per_round.items()}
    spreads = [(max(v) - min(v)) / 2 / medians[n] for n, v in per_round.items() if len(v) > 1 and medians[n] > 0]
    noise = min(0.10, statistics.median(spreads)) if spreads else 0.0
    return {n: min(v) for n, v in per_round.items()}, noise


#: how `round_stats` summarises the rounds, recorded with them
ROUND_STATS = "side by side, {rounds} interleaved rounds: p50 of the fastest round, p90/p99 of the median round"


def round_stats(rounds: list[LatencyStats]) -> dict[str, Any]:
    """One variant's latency over interleaved rounds, as a LatencyStats dict: the p50 of its fastest
    round (the decision's number) and the median round's p90 and p99 (a round is 8 runs or more:
    one round's tail is too few runs to stand alone)."""
    fastest = min(rounds, key=lambda s: s.p50_ms)
    stats = LatencyStats(p50_ms=fastest.p50_ms, p90_ms=statistics.median(s.p90_ms for s in rounds), p99_ms=statistics.median(s.p99_ms for s in rounds),
                         mean_ms=statistics.fmean(s.mean_ms for s in rounds), min_ms=min(s.min_ms for s in rounds), runs=sum(s.runs for s in rounds),
                         batch=fastest.batch, warmup=fastest.warmup)
    return {**stats.to_dict(), "timed": ROUND_STATS.format(rounds=len(rounds))}


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's speedup over the FP32 original at every batch both were timed at (p50 over p50)."""
    base = next((r for r in rows if r["name"] == "baseline-fp32"), None)
    for row in rows:
        row["speedup"] = {}
        if base is None:
            continue
        for batch, stats in row["latency"].items():
            ref = base["latency"].get(batch)
            if ref and stats.get("p50_ms"):
                row["speedup"][batch] = ref["p50_ms"] / stats["p50_ms"]


def with_decision_timings(variants: list[dict[str, Any]], decide: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluate stage's rows with the decide stage's side-by-side latency at the primary batch
    (which the evaluate stage leaves to it: timing every variant there twice spent 2-3 s of a
    ResNet-18 build at 224, and its two numbers for one artifact disagreed in one report), and
    their speedups over the FP32 original again."""
    timed = decide.get("latency") or {}
    if not timed:
        return variants
    batch = str(decide.get("primary_batch"))
    rows = []
    for row in variants:
        latency = {**(row.get("latency") or {}), **({batch: timed[row["name"]]} if row["name"] in timed else {})}
        rows.append({**row, "latency": dict(sorted(latency.items(), key=lambda kv: int(kv[0])))})
    add_speedups(rows)
    return rows


def int8_vs_fp32(model: str, batch: int, fp32_ms: float, int8_ms: float, noise: float) -> dict[str, Any]:
    """One model's INT8-vs-FP32 comparison from side-by-side timings at `batch`: INT8 is "slower"
    only beyond the measured noise (the rule report.md's advice to deploy FP32 follows)."""
    return {"model": model, "batch": batch, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "noise": noise, "rounds": ROUNDS,
            "slower": int8_ms > fp32_ms * (1.0 + noise)}
