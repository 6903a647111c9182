"""The FP32 rebuild of a build whose budget was missed because its original ran faster in FP32
than at the target's default INT8 (`fp32_rebuild`): the first build kept aside, and, when the
rebuild misses too, the faster of the two deployed artifacts, timed side by side, deploys.

Split from `pipeline.py`, which runs a build and calls these once it has a report.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.side_by_side import time_interleaved
from hadmc_deploy.build.stages import decide
from hadmc_deploy.errors import BudgetError
from hadmc_deploy.fileio import write_text_atomic
from hadmc_deploy.plan import BuildPlan
from hadmc_deploy.report import write_report


def fp32_rebuild(plan: BuildPlan, report: dict[str, Any]) -> tuple[BuildPlan, str] | None:
    """(the plan again at FP32, why) when a build at the target's default INT8 (no --precision given)
    missed its budget because the original measured faster in FP32 than in INT8, so the budget was
    judged against FP32, which plans chosen for INT8 prices do not reach; None otherwise. Why build
    again: two of four CNNs tried on this CPU (GroupNorm/PReLU; reflect padding, a grouped conv and
    Hardsigmoid gating) ran slower in INT8; the second missed 1.4x at INT8 (1.21x over FP32) and met
    it at FP32 (1.50x), which the user had to find out and ask for."""
    decision = report.get("decision") or {}
    budget = decision.get("budget") or {}
    # ONNX Runtime only: what was measured here; a TensorRT host would rather try FP16 than FP32
    if (plan.options.get("precision") or plan.precision == "fp32" or "fp32" not in plan.target.precisions or plan.target.backend != "onnxruntime"
            or (decision.get("verdict") or {}).get("exit_code") != BudgetError.exit_code):
        return None
    faster = faster_original(budget)
    if faster is None:
        return None
    reference, at_precision = faster
    p50 = {c["name"]: c["p50_ms"] for c in decision.get("candidates", [])}
    why = (f"{at_precision} measured slower than {reference} ({p50.get(at_precision, 0):.3f} vs {p50.get(reference, 0):.3f} ms at batch "
           f"{decision.get('primary_batch')}), so the budget of {budget.get('goal_speedup', 0):.2f}x was judged against {reference} and missed "
           f"({budget.get('measured_speedup', 0):.2f}x): building again at FP32 (the {plan.precision} build's report: report-{plan.precision}.md)")
    return replace(plan, options={**plan.options, "precision": "fp32"}), why


def keep_first_build(plan: BuildPlan) -> None:
    """Before the FP32 rebuild: the first build's report as report-<precision>.json/.md and its
    artifacts under artifacts-<precision>/ (the report's paths rewritten to them). Why moved: left in
    artifacts/<target>/, its INT8 variants of the first plan sat beside the rebuild's FP32 ones of
    another plan, and the deploy directory's neighbours no longer matched either report."""
    ours, kept = f"artifacts/{plan.target.name}/", f"artifacts-{plan.precision}/{plan.target.name}/"
    source = plan.out_dir / "artifacts" / plan.target.name
    if source.is_dir():
        dest = plan.out_dir / kept
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        source.rename(dest)
    _copy_report(plan.out_dir, plan.precision, ours, kept)


def keep_faster_build(ctx: BuildContext, first: dict[str, Any], second: dict[str, Any], second_precision: str,
                      timer: Any = time_interleaved) -> dict[str, Any]:
    """The report of the build that deploys, after an FP32 rebuild (`fp32_rebuild`). The rebuild's,
    unless it missed the budget too and the first build's deployed artifact measures faster, side by
    side with it here, beyond the noise: the directory then deploys the first build again (its
    artifacts and report back in place, the rebuild's under artifacts-<precision>/ and
    report-<precision>.*). Why: each build chose the fastest of its own variants, but a rebuild that
    also misses is not known to be better than what it replaced (its plan was searched at FP32
    prices from the same original)."""
    plan, target = ctx.plan, ctx.plan.target.name
    if ((second.get("decision") or {}).get("verdict") or {}).get("exit_code") != BudgetError.exit_code:
        return second
    kept, ours = f"artifacts-{plan.precision}/{target}/", f"artifacts/{target}/"
    rows = [{"name": name, "backend": plan.target.backend, "artifact": where + decide.DEPLOY_DIR} for name, where in (("first", kept), ("rebuild", ours))]
    if not all((plan.out_dir / r["artifact"]).is_dir() for r in rows):
        return second
    fastest, noise = timer(ctx, rows, int((second.get("decision") or {}).get("primary_batch") or plan.input_shape[0]))
    if not fastest["first"] < fastest["rebuild"] * (1.0 - noise):
        return second
    rebuilt = f"artifacts-{second_precision}/{target}/"
    shutil.rmtree(plan.out_dir / rebuilt, ignore_errors=True)
    (plan.out_dir / rebuilt).parent.mkdir(parents=True, exist_ok=True)
    (plan.out_dir / ours).rename(plan.out_dir / rebuilt)
    (plan.out_dir / kept).rename(plan.out_dir / ours)
    _copy_report(plan.out_dir, second_precision, ours, rebuilt)
    for suffix in ("json", "md"):
        (plan.out_dir / f"report-{plan.precision}.{suffix}").unlink(missing_ok=True)
    note = (f"built again at {second_precision} (report-{second_precision}.md), which missed the budget too: its deployed "
            f"{second['decision']['deploy']} measured {fastest['rebuild']:.3f} ms against this build's {first['decision']['deploy']} at "
            f"{fastest['first']:.3f} ms, side by side (noise {noise:.0%}), so this build's stays deployed")
    ctx.ui.warn(note)
    first = {**first, "notes": [note, *first.get("notes", [])], "rebuild": {"precision": second_precision, "report": f"report-{second_precision}.json",
                                                                           "deploy_ms": fastest["rebuild"], "kept_ms": fastest["first"], "noise": noise}}
    plan.save()  # --resume continues this build, not the rebuild
    return write_report(ctx, first)


def _copy_report(out_dir: Path, precision: str, old: str, new: str) -> None:
    """report.json/.md copied to report-<precision>.json/.md, their artifact paths `old` rewritten to `new`."""
    for suffix in ("json", "md"):
        text = (out_dir / f"report.{suffix}").read_text().replace(old, new)
        write_text_atomic(out_dir / f"report-{precision}.{suffix}", text)


def faster_original(budget: dict[str, Any]) -> tuple[str, str] | None:
    """(the FP32 original, the original at the build's precision) when the budget was judged against
    the former because it measured faster (`decide.budget_reference`); None when it was not."""
    reference, at_precision = budget.get("reference"), budget.get("original_at_precision")
    return (reference, at_precision) if reference and at_precision and reference != at_precision else None
