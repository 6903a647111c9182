"""Stage 4, search: channel importance, then the width plan under the budget.

The budget is a latency (`--speedup`, `--latency-ms`: the latency-guided search), a
channel or MACs ratio (`--ratio`, `--macs-ratio`: one uniform ratio, as `prune` always
offered), or a given plan (`--widths`). Every plan is priced by the same latency model,
corrected by what earlier rounds of this build measured (see `build/decide.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.build.correction import LatencyCorrection
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import data_hash, dataset, graph, latency_model, loaded_model, with_precision
from hadmc_deploy.build.stages.latency import round_to as plan_round_to
from hadmc_deploy.errors import UsageError
from hadmc_deploy.fileio import atomic_path, sha256_file, write_text_atomic
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.importance import score_groups
from hadmc_deploy.latency.base import Prediction
from hadmc_deploy.search import search
from hadmc_deploy.search.given import check_plan, keep_for_macs_ratio, keep_for_ratio, price_plan
from hadmc_deploy.specs import LayerSpec

PLAN_FILE = "width_plan.json"
SCORES_FILE = "scores.npz"


class PrecisionModel:
    """Predicts at one precision whatever precision the graph recorded in its specs, and
    applies the correction that earlier rounds of this build measured (build/correction.py)."""

    def __init__(self, inner: Any, precision: str, correction: LatencyCorrection | None = None) -> None:
        self.inner = inner
        self.precision = precision
        self.correction = correction

    def predict(self, specs: list[LayerSpec]) -> Prediction:
        pred = self.inner.predict(with_precision(specs, self.precision))
        return self.correction.apply(pred) if self.correction is not None else pred

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def inputs(ctx: BuildContext) -> dict[str, Any]:
    s = ctx.settings.search
    learned = s.search in ("amc", "ppo")
    needs_data = s.importance in ("taylor", "gradient") or learned
    return {
        "budget": {"speedup": s.speedup, "latency_ms": s.latency_ms, "ratio": s.ratio, "macs_ratio": s.macs_ratio},
        "search": s.search, "importance": s.importance, "seed": ctx.settings.data.seed, "min_keep_ratio": s.min_keep_ratio,
        "episodes": s.episodes if learned else None, "joint_precision": s.joint_precision if learned else None,
        "round_to": plan_round_to(ctx),
        "importance_data": data_hash(ctx, "data") if needs_data else None,
        "importance_samples": s.importance_samples if needs_data else None,
        "eval": data_hash(ctx, "eval") if learned else None,
        "widths": sha256_file(s.widths) if s.widths else None,
        # the measured correction of an earlier round (closed loop), if any
        "correction": ctx.loop.correction.to_dict() if ctx.loop.correction is not None else None,
        "forced_plan": ctx.loop.forced_plan,
    }


def run(ctx: BuildContext) -> StageResult:
    s = ctx.settings.search
    if not s.has_budget:
        return StageResult({"pruned": False}, skipped="no budget (--speedup, --latency-ms, --ratio, --macs-ratio or --widths): the model keeps its widths")
    g = graph(ctx)
    data = None
    if s.importance in ("taylor", "gradient"):
        data = dataset(ctx, "data")
        if data is None:
            raise UsageError(f"--importance {s.importance} needs --data (or --train) SOURCE to compute gradients")
        data = data.subset(s.importance_samples, seed=ctx.settings.data.seed)
    scores = score_groups(loaded_model(ctx).model, g, criterion=s.importance, data=data, ui=ctx.ui)
    lm = PrecisionModel(latency_model(ctx), ctx.plan.precision, ctx.loop.correction)
    if ctx.loop.forced_plan:
        result = price_plan(g, dict(ctx.loop.forced_plan), lm, f"{s.search} (the best measured plan of the closed loop)")
    elif s.widths:
        try:
            given = WidthPlan.from_json(Path(s.widths).read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--widths {s.widths} is not a width plan ({exc})", hint='write {"keep": {"group id": channels}}') from exc
        check_plan(g, given)
        result = price_plan(g, dict(given.keep), lm, "given (--widths)")
    elif s.ratio is not None:
        result = price_plan(g, keep_for_ratio(g, s.ratio, plan_round_to(ctx)), lm, f"uniform ratio {s.ratio:g} (--ratio)")
    elif s.macs_ratio is not None:
        result = price_plan(g, keep_for_macs_ratio(g, s.macs_ratio, plan_round_to(ctx)), lm, f"uniform MACs ratio {s.macs_ratio:g} (--macs-ratio)")
    else:
        rl_options = None
        if s.search in ("amc", "ppo"):  # learned policies score candidates on real data
            rl_options = {
                "model": loaded_model(ctx).model, "val_data": dataset(ctx, "eval"), "calib_data": dataset(ctx, "train"),
                "seed": ctx.settings.data.seed, "episodes": s.episodes, "precisions": ("fp32", "int8") if s.joint_precision else (),
            }
        result = search(
            g, scores, lm, method=s.search, speedup=s.speedup, latency_ms=s.latency_ms,
            round_to=plan_round_to(ctx), min_keep_ratio=s.min_keep_ratio, rl_options=rl_options, ui=ctx.ui,
        )
    result.print_plan(ctx.ui)
    plan_path, scores_path = ctx.path(PLAN_FILE), ctx.path(SCORES_FILE)
    write_text_atomic(plan_path, result.plan.to_json())
    with atomic_path(scores_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{gid: np.asarray(sc) for gid, sc in scores.items()})
    out = json_safe(result.to_dict())
    out["pruned"] = any(c.after != c.before for c in result.changes)
    out["correction"] = ctx.loop.correction.to_dict() if ctx.loop.correction is not None else None
    raw = PrecisionModel(latency_model(ctx), ctx.plan.precision)
    out["uncorrected"] = {"baseline_ms": raw.predict(g.layer_specs()).total_ms, "predicted_ms": raw.predict(g.layer_specs(dict(result.plan.keep))).total_ms}
    out["_summary"] = f"{result.method}: predicted {result.baseline_ms:.3f} -> {result.predicted_ms:.3f} ms ({result.predicted_speedup:.2f}x)"
    return StageResult(out, [plan_path, scores_path])


def json_safe(obj: Any) -> Any:
    """NaN (e.g. "importance kept" of a given plan) becomes null: report.json stays strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


STAGE = Stage("search", run, inputs, ("trace", "latency model"), dry_run=True)
