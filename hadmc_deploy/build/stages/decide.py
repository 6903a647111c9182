"""Stage 12, decide: time the candidate artifacts side by side at the primary batch, choose the
one to deploy (`build/decide.py` has the rules), copy it to artifacts/<target>/deploy/, and
judge the accuracy guard and the latency budget on what was measured."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hadmc_deploy.backends import Artifact
from hadmc_deploy.backends.tensorrt_artifact import engine_command
from hadmc_deploy.build.decide import (
    Candidate,
    Decision,
    budget_reference,
    budget_verdict,
    chance_level_warning,
    choose,
    delivers,
    guard_exclusion,
    verdict,
    vouch_for_choice,
)
from hadmc_deploy.build.decision_timing import time_candidates
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import primary_batch
from hadmc_deploy.build.int8_heldout import check_against_float, int8_options
from hadmc_deploy.build.sample_budget import MIN_INT8_GUARD_SAMPLES
from hadmc_deploy.build.self_check import check_deployed, guard_float_layers
from hadmc_deploy.build.side_by_side import fastest_and_noise, round_stats
from hadmc_deploy.calibration.verify_qdq import QdqCheck
from hadmc_deploy.errors import BackendUnavailableError
from hadmc_deploy.triton import write_triton_repo

DEPLOY_DIR = "deploy"


def inputs(ctx: BuildContext) -> dict[str, Any]:
    q = ctx.settings.quantization
    return {"guard": q.max_accuracy_drop, "allow": q.allow_accuracy_drop, "speedup": ctx.settings.search.speedup,
            "latency_ms": ctx.settings.search.latency_ms, "batch": primary_batch(ctx),
            "triton_repo": ctx.settings.output.triton_repo}


def run(ctx: BuildContext) -> StageResult:
    rows = [r for r in ctx.results["evaluate"]["variants"] if r.get("artifact")]
    if not rows:
        result: dict[str, Any] = {"deploy": None}
        if ctx.settings.search.latency_budget:
            result["verdict"] = unmeasured_budget_verdict(ctx)
        return StageResult(result, skipped="no artifact was built here: the decision is taken where the target's backend runs")
    q = ctx.settings.quantization
    batch = primary_batch(ctx)
    rounds, disputed = time_candidates(ctx, rows, batch)
    fastest, noise = fastest_and_noise(rounds)
    timed = {name: round_stats(r) for name, r in rounds.items()}
    by_name = {r["name"]: r for r in rows}
    original = by_name["baseline-fp32"]
    reference_acc = original.get("accuracy")
    candidates = []
    for r in rows:
        excluded = "" if q.allow_accuracy_drop else guard_exclusion(r.get("accuracy"), reference_acc, q.max_accuracy_drop)
        agreement = r.get("agreement") or {}
        if not excluded and agreement.get("refused"):
            excluded = f"{INT8_DISAGREES} ({agreement.get('reason')})"
        if not excluded and not q.allow_accuracy_drop and r["model"] == "pruned" and r.get("accuracy") is None:
            excluded = pruned_exclusion(ctx.results.get("recover", {}))
        if r["name"] == "baseline-fp32":
            excluded = ""  # what the user gave us can always be handed back
        candidates.append(Candidate(r["name"], fastest[r["name"]], r.get("accuracy"), excluded))
    precision_ref = by_name.get(f"baseline-{ctx.plan.precision}", original)
    budget_ref = by_name[budget_reference(fastest, precision_ref["name"], original["name"])]
    s = ctx.settings.search
    goal = s.speedup if s.speedup is not None else (fastest[budget_ref["name"]] / s.latency_ms if s.latency_ms else None)
    pruning_asked = s.ratio is not None or s.macs_ratio is not None or bool(s.widths)

    def pick(candidates: list[Candidate]) -> tuple[str, str]:
        name, reason = choose(candidates, noise)
        meeting = [c for c in candidates if not c.excluded and delivers(c.name, fastest, budget_ref["name"], goal, noise, pruning_asked, ctx.plan.precision)]
        if goal is not None and meeting and name not in {c.name for c in meeting}:
            # a simpler variant within noise of the fastest, but short of the budget: the budget wins
            best = min(meeting, key=lambda c: c.p50_ms)
            name, reason = best.name, f"the fastest allowed variant that meets the budget ({best.p50_ms:.3f} ms p50)"
        return name, reason

    pending = _pending_mixed_checks(ctx) & {c.name for c in candidates}

    def check(variant: str) -> tuple[str, dict[str, Any]]:
        result = mixed_check(ctx, variant)
        if result.passed:
            return "", result.to_dict()
        ctx.ui.warn(f"{variant}: the mixed INT8/FP32 graph may not deploy: {result.reason}")
        return f"{INT8_DISAGREES} ({result.reason})", result.to_dict()

    # a mixed graph's check against FP32 (no labels: it is the guard) runs only where it can change
    # what deploys: a ResNet-18 at 224 spent 5 s of its build checking one that then measured slower
    candidates, name, reason, mixed_checks = vouch_for_choice(candidates, pick, pending, check)
    deployed = by_name[name]
    decision = Decision(
        deploy=name, reason=reason, primary_batch=batch, noise=noise,
        candidates=[{"name": c.name, "p50_ms": c.p50_ms, "accuracy": c.accuracy, "excluded": c.excluded,
                     **({"unchecked": MIXED_UNCHECKED} if c.name in pending and c.name not in mixed_checks and not c.excluded else {})} for c in candidates],
        speedup_vs_fp32_original=fastest["baseline-fp32"] / fastest[name],
        speedup_vs_original_at_precision=fastest[precision_ref["name"]] / fastest[name],
        accuracy_change=(deployed.get("accuracy") - reference_acc) if deployed.get("accuracy") is not None and reference_acc is not None else None,
    )
    decision.budget = budget_verdict(goal, fastest[budget_ref["name"]] / fastest[name], noise)
    if decision.budget is not None:
        decision.budget["reference"] = budget_ref["name"]
        decision.budget["original_at_precision"] = precision_ref["name"]
        if s.speedup is None and s.latency_ms:  # asked in ms: the report states it so, beside the speedup it became
            decision.budget.update(goal_ms=s.latency_ms, deployed_ms=fastest[name])
        allowed = [c for c in candidates if not c.excluded]
        best = min(allowed, key=lambda c: c.p50_ms)  # the deployed one may be a simpler variant within noise of it
        decision.budget["best"] = {"variant": best.name, "speedup": fastest[budget_ref["name"]] / best.p50_ms}
        # faster than every allowed variant but kept from deploying: what a missed budget's message names
        decision.budget["excluded_faster"] = [{"variant": c.name, "speedup": fastest[budget_ref["name"]] / c.p50_ms, "why": c.excluded}
                                              for c in sorted(candidates, key=lambda c: c.p50_ms) if c.excluded and c.p50_ms < best.p50_ms]
        decision.budget["guard_float_layers"] = _guard_float_layers(ctx, best.name)
        check = ctx.results.get("latency check", {})
        if check.get("checked"):
            decision.budget["plan_all_int8_speedup"] = check.get("measured_speedup")
    code, why = verdict(name, candidates, budget_ref["name"], goal, noise, pruning_asked, ctx.plan.precision)
    decision.verdict = {"exit_code": code, "why": why}
    fallback = (ctx.results.get("backend build") or {}).get("fallback_target")
    if fallback and s.latency_budget and code != 15:
        # the CPU artifacts' speedup says nothing of the target's: their budget is not the one asked
        measured = fastest[budget_ref["name"]] / fastest[name]
        decision.verdict = unmeasured_budget_verdict(ctx, also=f"measured {measured:.2f}x on the {fallback} fallback only, which does not tell the {ctx.plan.target.name}'s")
    if code == 15 and PRUNED_UNCHECKED in why:
        decision.verdict["hint"] = ("give --calib images (no labels needed) so the pruned model is recalibrated and compared with the original, "
                                    "--train data to recover it, or --allow-accuracy-drop to deploy it unchecked")
    elif code == 15 and PRUNED_UNJUDGED in why:
        decision.verdict["hint"] = "give labelled --eval data so its accuracy is measured, or --allow-accuracy-drop to deploy it unjudged"
    elif code == 15 and PRUNED_DISAGREES in why:
        decision.verdict["hint"] = ("give --train data so recovery fine-tunes the pruned model from the original, or raise --epochs (without "
                                    "--train it distils on the calibration images, longer with more epochs); more --calib images (the check needs enough held-out "
                                    "ones to vouch for a 1% bound); labelled --eval data to judge "
                                    "accuracy instead of agreement; or --allow-accuracy-drop to deploy it anyway")
    elif code == 15 and INT8_DISAGREES in why and ctx.settings.data.eval:
        decision.verdict["hint"] = "see report.md (Quantization) for the guard's repair steps; raise --max-accuracy-drop, or pass --allow-accuracy-drop to accept the loss"
    elif code == 15 and INT8_DISAGREES in why:
        decision.verdict["hint"] = ("give labelled --eval data so the guard measures the INT8 graph's accuracy; without labels, more --calib images "
                                    f"or a lower --calib-samples (the check compares the images beyond --calib-samples: {MIN_INT8_GUARD_SAMPLES} "
                                    "vouch for a 1-point loss with room for one image's worth lost); or --allow-accuracy-drop to deploy it unchecked")
    if q.max_accuracy_drop is not None and reference_acc is not None:
        decision.guard = {"allowed": q.max_accuracy_drop, "reference": reference_acc, "allowed_by_flag": q.allow_accuracy_drop,
                          "excluded": {c.name: c.excluded for c in candidates if c.excluded}}
    for warning in [chance_level_warning(reference_acc, ctx.results["load"].get("num_classes")), *ctx.results["evaluate"].get("warnings", [])]:
        if warning:
            decision.warnings.append(warning)
            ctx.ui.warn(warning)
    out = _copy_deployed(ctx, deployed)
    result = decision.to_dict()
    if disputed:
        result["retimed"] = {"why": disputed, "rounds": len(next(iter(rounds.values())))}
    result["latency"] = timed  # the report's latency of each variant at this batch (the evaluate stage left it to this stage)
    if pending:
        result["mixed_checks"] = {n: mixed_checks.get(n, MIXED_UNCHECKED) for n in pending}
    result["self_check"] = check_deployed(ctx, fastest, batch)
    if result["self_check"].get("feedback_written_to"):
        fb = result["self_check"]["feedback"]
        ctx.ui.log(f"self-check: the table missed what deployed by more than {result['self_check']['tolerance']:.0%}; "
                   f"its cached copy now carries feedback x{fb['scale']:.3f} for the next build ({result['self_check']['feedback_written_to']})")
    if ctx.settings.output.triton_repo:
        result["triton"] = _triton(ctx, out, name)
    result["artifact"] = str(out.relative_to(ctx.plan.out_dir))
    result["source_artifact"] = deployed["artifact"]
    result["_summary"] = f"deploy {name}: {decision.speedup_vs_fp32_original:.2f}x over the FP32 original at batch {batch} ({reason})"
    return StageResult(result, [out])


#: what a mixed INT8/FP32 variant that was never checked against FP32 shows (no labels: the check is
#: the guard, and it runs only on a variant that could deploy)
MIXED_UNCHECKED = "not checked against FP32: neither chosen nor the fastest allowed, so it could not deploy"


def _pending_mixed_checks(ctx: BuildContext) -> set[str]:
    """The mixed variants whose check against FP32 the quantize stage left to this stage."""
    quant = ctx.results.get("quantize") or {}
    return {f"{model}-mixed" for model in ("baseline", "pruned") if ((quant.get(model) or {}).get("mixed") or {}).get("check_pending")}


def mixed_check(ctx: BuildContext, variant: str) -> QdqCheck:
    """The mixed graph of `variant`'s model against its float model on the held-out images."""
    model = variant.partition("-")[0]
    mixed = ctx.results["quantize"][model]["mixed"]
    return check_against_float(ctx, model, ctx.path(mixed["path"]), int8_options(ctx))


def unmeasured_budget_verdict(ctx: BuildContext, also: str = "") -> dict[str, Any]:
    """Exit 13 when a latency budget was asked and the target's backend is missing here (TensorRT):
    the portable artifacts are complete, but an exit 0 would read as a budget met that nobody
    measured on the target, and the next step of a script would deploy on that word. `also`: what
    was measured instead (the --fallback cpu artifacts)."""
    s, target, out_dir = ctx.settings.search, ctx.plan.target, ctx.plan.out_dir
    asked = f"{s.speedup:.2f}x" if s.speedup is not None else f"{s.latency_ms:g} ms"
    reason = (ctx.results.get("backend build") or {}).get("reason") or f"the {target.backend} backend is not available here"
    return {
        "exit_code": BackendUnavailableError.exit_code,
        "why": f"the latency budget of {asked} was not measured on the {target.name}: none of its artifacts could be built and timed here ({reason}"
               + (f"; {also}" if also else "") + f"); the portable artifacts are in {out_dir}",
        "hint": (f"on a host with the {target.description}, run `hadmc-deploy build --resume {out_dir}`, which builds and measures it "
                 f"(`{engine_command(out_dir, target.name, ctx.plan.precision)}` builds the engine without the check)"),
    }


#: the start of the exclusion a pruned model gets when its held-out images do not vouch for its agreement with the original (no --eval)
PRUNED_DISAGREES = "the pruned model is not shown to agree with the original"


#: the start of the exclusion an INT8 graph gets when the accuracy guard refused it (build/stages/quantize.py)
INT8_DISAGREES = "its outputs disagree with FP32"


#: the exclusion of a pruned model that no data could check
PRUNED_UNCHECKED = "the pruned model was checked on no data"


#: the exclusion of a pruned model whose outputs are not class scores, without labelled --eval data
PRUNED_UNJUDGED = "the pruned model's outputs are not class scores"


def pruned_exclusion(recovered: dict[str, Any]) -> str:
    """Why a pruned variant may not deploy without labelled data, or "": it disagrees with the
    original (`build/fidelity.py`), there were no images at all to check it on (its BatchNorm
    statistics are then the original's, stale for the narrower layers), or its outputs are not
    class scores, which the images cannot judge without labels (a random-weight CNN with a 4-class
    per-pixel map, pruned to 2.8x, deployed with exit 0 on nothing but a note in report.md)."""
    if recovered.get("unchecked"):
        return f"{PRUNED_UNCHECKED} (no --train, --calib or --eval images)"
    agreement = recovered.get("agreement")
    if not agreement or (agreement.get("passed") and agreement.get("judged")):
        return ""
    if not agreement.get("judged"):
        return f"{PRUNED_UNJUDGED}: nothing shows it agrees with the original without labels ({agreement.get('source')} compared, not judged)"
    return f"{PRUNED_DISAGREES} on {agreement['source']} ({agreement['reason']})"


def _guard_float_layers(ctx: BuildContext, variant: str) -> int:
    """How many layers the accuracy guard kept in float in `variant`'s model (0 for float variants):
    the latency check timed the plan all-INT8, so these are what it did not see."""
    model, _, precision = variant.partition("-")
    return guard_float_layers(ctx, model) if precision in ("int8", "mixed") else 0


def _copy_deployed(ctx: BuildContext, row: dict[str, Any]) -> Path:
    """artifacts/<target>/deploy/: a stable path to the chosen artifact (replaced atomically)."""
    src = ctx.path(row["artifact"])
    dest = src.parent / DEPLOY_DIR
    staging = Path(tempfile.mkdtemp(prefix=".deploy.", dir=src.parent))
    shutil.copytree(src, staging, dirs_exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return dest


def _triton(ctx: BuildContext, deployed: Path, variant: str) -> dict[str, Any]:
    """A Triton model repository for the deployed artifact."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in Path(str(ctx.plan.model or "model")).stem)
    path = write_triton_repo(ctx.settings.output.triton_repo, Artifact.load(deployed), name)
    return {"written": True, "path": str(path), "variant": variant}


STAGE = Stage("decide", run, inputs, ("evaluate",))
