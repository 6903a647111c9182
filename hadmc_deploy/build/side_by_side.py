"""Built artifacts timed side by side: interleaved rounds, one session alive at a time.

Why one module: the decide stage judges its candidates this way, and the evaluate stage confirms
this way, before the report advises FP32 over INT8 at some batch, what one pass of single timings
suggested (on this shared 2-vCPU machine single timings of the demo's pruned variants at batch 1
put INT8 at 0.173 ms against FP32's 0.155, where 10 interleaved rounds gave 0.080 against 0.089).
"""

from __future__ import annotations

import statistics
from typing import Any

from hadmc_deploy.backends import Artifact, get
from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, WHOLE_MODEL_SECONDS

#: interleaved rounds over the artifacts compared.
ROUNDS = WHOLE_MODEL_ROUNDS


def time_interleaved(ctx: BuildContext, rows: list[dict[str, Any]], batch: int) -> tuple[dict[str, float], float]:
    """Per variant (`rows`: name, backend, artifact) the p50 of its fastest interleaved round (load
    only adds time; on a shared 2-vCPU machine whole rounds run on one core when the other is
    taken, and a median over rounds mixes the two regimes), and the noise: the median relative
    spread of each variant's round p50s around its own median, at most 10%."""
    per_round: dict[str, list[float]] = {r["name"]: [] for r in rows}
    loaded = {r["name"]: (get(r["backend"]), Artifact.load(ctx.path(r["artifact"]))) for r in rows}
    with ctx.ui.progress(f"timing {len(rows)} candidates side by side (batch {batch})", ROUNDS * len(rows)) as bar:
        for _ in range(ROUNDS):
            for name, (backend, artifact) in loaded.items():
                per_round[name].append(backend.benchmark(artifact, batch=batch, warmup=2, runs=WHOLE_MODEL_RUNS, min_seconds=WHOLE_MODEL_SECONDS).p50_ms)
                backend.release_sessions()  # one session alive at a time, as deployed and as the table timed
                bar.advance()
    medians = {n: statistics.median(v) for n, v in per_round.items()}
    spreads = [(max(v) - min(v)) / 2 / medians[n] for n, v in per_round.items() if len(v) > 1 and medians[n] > 0]
    noise = min(0.10, statistics.median(spreads)) if spreads else 0.0
    return {n: min(v) for n, v in per_round.items()}, noise


def int8_vs_fp32(model: str, batch: int, fp32_ms: float, int8_ms: float, noise: float) -> dict[str, Any]:
    """One model's INT8-vs-FP32 comparison from side-by-side timings at `batch`: INT8 is "slower"
    only beyond the measured noise (the rule report.md's advice to deploy FP32 follows)."""
    return {"model": model, "batch": batch, "fp32_ms": fp32_ms, "int8_ms": int8_ms, "noise": noise, "rounds": ROUNDS,
            "slower": int8_ms > fp32_ms * (1.0 + noise)}
