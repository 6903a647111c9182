"""The decide stage's side-by-side timing of its candidates, taken twice when the first pass
disputes the latency check's measurement of the same two graphs.

Why a module of its own: the rule is a judgement on two stages' measurements (what noise allows
between them), kept apart from the stage's choice of what deploys.
"""

from __future__ import annotations

from typing import Any

from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.self_check import guard_float_layers
from hadmc_deploy.build.side_by_side import fastest_and_noise, interleaved_rounds


def time_candidates(ctx: BuildContext, rows: list[dict[str, Any]], batch: int) -> tuple[dict[str, list[Any]], str]:
    """(each candidate's interleaved rounds, why they were timed twice or ""): once, and again
    when the first pass disputes the latency check's measurement (`disputed_by_latency_check`);
    the decision then reads all the rounds (each graph's fastest of twice as many)."""
    rounds = interleaved_rounds(ctx, rows, batch)
    disputed = disputed_by_latency_check(ctx, *fastest_and_noise(rounds), batch)
    if disputed:
        ctx.ui.log(f"{disputed}: timing the candidates again")
        more = interleaved_rounds(ctx, rows, batch)
        rounds = {name: rounds[name] + more[name] for name in rounds}
    return rounds, disputed


#: how far this stage's speedup of the pruned model over the original may lie from the latency check's,
#: beyond the larger of the two measured noises, before the candidates are timed again
DISPUTE_MARGIN = 0.05


def disputed_by_latency_check(ctx: BuildContext, fastest: dict[str, float], noise: float, batch: int) -> str:
    """Why this stage's timings should be taken again, or "": the latency check timed the same two
    graphs (the original and the plan at the build's precision) a minute earlier, and the two
    speedups disagree by more than either measurement's noise allows. Why: a noisy pass decides
    the exit code (a PixelShuffle CNN's plan measured 1.45x in the latency check and 1.00x here,
    where the same artifacts timed again ran 1.39-1.49x: exit 14, budget missed). Not where the
    accuracy guard kept layers in float: then the graphs differ and so may their speed."""
    check = ctx.results.get("latency check") or {}
    precision = ctx.plan.precision
    base, plan = f"baseline-{precision}", f"pruned-{precision}"
    there = check.get("measured_speedup")
    if not check.get("checked") or not there or check.get("batch") != batch or base not in fastest or plan not in fastest:
        return ""
    if guard_float_layers(ctx, "baseline") or guard_float_layers(ctx, "pruned"):
        return ""
    here = fastest[base] / fastest[plan]
    allowed = max(noise, float(check.get("noise") or 0.0)) + DISPUTE_MARGIN
    if abs(here / there - 1.0) <= allowed:
        return ""
    return (f"{plan} measured {here:.2f}x over {base} here and {there:.2f}x in the latency check, "
            f"further apart than the measured noise (±{100 * allowed:.0f}%) allows")
