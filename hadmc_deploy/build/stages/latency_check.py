"""Stage 5b, latency check: the chosen plan timed against the original, side by side, before
any time is spent on recovery.

Why here: a pruned model's speed does not depend on its weights, so the budget can be
verified right after surgery. Both models are exported, built by the target's backend at
the build's precision (INT8 with speed-only ranges: ranges change scales, never the
graph) and timed in interleaved rounds at the search batch, so load from other processes
hits both alike. The measured speedup is the ratio of each model's fastest round (load only
adds time, as in the latency tables): on these shared 2-vCPU machines the second core comes
and goes for seconds at a time, and a median of per-round ratios mixed the two regimes (one
demo build read 1.47, 1.28, 1.22, 1.88, 1.88 for one plan). The spread of the per-round
ratios is the measurement's noise: a plan misses the budget only when it misses it by more
than that. The pipeline corrects the
latency model with these numbers and searches again (`build/pipeline.py`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from hadmc_deploy.backends import get as get_backend
from hadmc_deploy.build.decide import meets
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import baseline_export, graph, latency_model, loaded_model
from hadmc_deploy.latency.whole_model import time_plans
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS

#: interleaved rounds; each round times both models once.
ROUNDS = WHOLE_MODEL_ROUNDS


def inputs(ctx: BuildContext) -> dict[str, Any]:
    # whether the backend runs here: a build resumed on the target host (TensorRT installed) must time the plan the first host could not
    available, _ = get_backend(ctx.plan.target.backend).available()
    return {"precision": ctx.plan.precision, "batch": ctx.plan.input_shape[0], "speedup": ctx.settings.search.speedup, "latency_ms": ctx.settings.search.latency_ms,
            "backend_available": available}


def timing_exporter(ctx: BuildContext) -> str:
    """"fast" (TorchScript, a fixed batch) where the latency table's context fit checked that its
    graph runs the deployed graph's kernels, else "deploy": the plan exported as it ships. Why
    checked: a channel shuffle's TorchScript graph ran 2.1-2.9x as long in INT8 as the deployed one
    (a small ShuffleNet-like CNN; tools/bench_timing_exports.py), so an unchecked export timed
    something that never deploys."""
    return checked_exporter(getattr(latency_model(ctx), "table", None))


def checked_exporter(table: Any) -> str:
    """"fast" when every plan of `table`'s context fit but the full one was exported by TorchScript
    (which the fit does only after checking its kernels), else "deploy" (no table, no context fit,
    or a fit that exported as deployed)."""
    context = getattr(table, "context", None)
    rows = [r for r in getattr(context, "fitted_on", None) or [] if r.get("exporter") and r.get("plan") != "full"]
    return "fast" if rows and all(r["exporter"] == "fast" for r in rows) else "deploy"


def run(ctx: BuildContext) -> StageResult:
    s = ctx.settings.search
    search = ctx.results["search"]
    if not s.latency_budget or not search.get("pruned"):
        return StageResult({"checked": False}, skipped="no latency budget to verify" if not s.latency_budget else "nothing was pruned")
    backend = get_backend(ctx.plan.target.backend)
    ok, reason = backend.available()
    if not ok:
        return StageResult({"checked": False}, skipped=f"the {ctx.plan.target.backend} backend is not available here ({reason}): the budget is checked on the target host")
    g = graph(ctx)
    plans = {"baseline": g.full_widths(), "plan": {k: int(v) for k, v in search["keep"].items()}}
    exporter = timing_exporter(ctx)
    timed = time_plans(
        loaded_model(ctx).model, g, plans, ctx.plan.input_shape, backend, workdir=ctx.path("latency_check"),
        rounds=ROUNDS, warmup=2, runs=WHOLE_MODEL_RUNS, exporter=exporter, precision=ctx.plan.precision,
        exported={"baseline": Path(baseline_export(ctx).path)} if exporter == "deploy" else None, ui=ctx.ui,
    )
    base, plan = timed
    ratios = [b / p for b, p in zip(base.round_ms, plan.round_ms, strict=True) if p > 0]
    measured = base.min_round_ms / plan.min_round_ms if plan.min_round_ms > 0 else statistics.median(ratios)
    # the spread of the per-round ratios around their median: what this machine's noise allows
    noise = (max(ratios) - min(ratios)) / 2 / statistics.median(ratios) if len(ratios) > 1 else 0.0
    noise = min(noise, 0.10)  # never let a noisy run excuse more than a 10% miss
    goal = s.speedup if s.speedup is not None else base.min_round_ms / s.latency_ms
    met = meets(measured, goal, noise)
    result = {
        "checked": True,
        "batch": ctx.plan.input_shape[0],
        "precision": ctx.plan.precision,
        "goal_speedup": goal,
        "predicted_speedup": search["predicted_speedup"],
        "predicted_ms": {"baseline": search["baseline_ms"], "plan": search["predicted_ms"]},
        "measured_ms": {"baseline": base.min_round_ms, "plan": plan.min_round_ms},
        "plan_widths": plans["plan"],  # which plan was timed (build/self_check.py compares it with the deployed one)
        "exporter": exporter,
        "median_ms": {"baseline": base.median_ms, "plan": plan.median_ms},
        "measured_speedup": measured,
        "round_ratios": ratios,
        "noise": noise,
        "met": met,
        "_summary": f"measured {measured:.2f}x (predicted {search['predicted_speedup']:.2f}x, goal {goal:.2f}x, noise ±{100 * noise:.0f}%): {'met' if met else 'missed'}",
    }
    return StageResult(result)


STAGE = Stage("latency check", run, inputs, ("search", "surgery"))
