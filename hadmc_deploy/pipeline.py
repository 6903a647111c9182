"""The build pipeline: load -> trace -> latency model -> search -> surgery -> recover ->
export -> calibrate -> quantize -> backend build -> evaluate -> report.

Each stage is a function from the build context to files in the build directory
plus a small JSON result, run through the stage cache (`cache.py`): a stage whose
inputs are unchanged is skipped, so reruns are instant and `--resume` restarts at
the stage that failed. A stage whose implementing module is not in this checkout
stops the build with "not built yet" (never a fake result); the report written so
far says which stages ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadmc_deploy.cache import StageCache, code_hash, tool_versions
from hadmc_deploy.errors import AccuracyGuardError, HadmcError, NotImplementedYetError
from hadmc_deploy.plan import BuildPlan
from hadmc_deploy.ui import UI, quiet_ui

#: statuses a stage can end in (the report's schema lists the same).
STATUSES = ("done", "cached", "skipped", "stopped", "not built yet", "failed", "not run")


@dataclass
class StageResult:
    """What a stage function returns: a JSON-able result and the files it wrote."""

    result: dict[str, Any]
    outputs: list[Path] = field(default_factory=list)
    #: a stage that had nothing to do says why ("no latency budget given").
    skipped: str | None = None
    #: a stage that could not finish its job here but leaves the build valid (the TensorRT
    #: fallback: portable artifacts only) says why and how to finish; later stages still run.
    stop: str | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Any], StageResult]
    #: options, data hashes and files this stage reads (beyond upstream stage outputs).
    inputs: Callable[[Any], dict[str, Any]]
    upstream: tuple[str, ...] = ()
    #: modules whose source keys the cache (the stage's implementation).
    modules: tuple[str, ...] = ()
    #: whether --dry-run runs it (cheap stages that produce the plan to print).
    dry_run: bool = False


@dataclass
class StageOutcome:
    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "seconds": round(self.seconds, 3), "key": self.key}


class BuildContext:
    """The state one build threads through its stages: the plan, the cache, stage results,
    and lazily computed objects (the loaded model, data sets, the traced graph) that are
    only built when a stage that needs them actually runs (never on a full cache hit)."""

    def __init__(self, plan: BuildPlan, ui: UI, cache: StageCache) -> None:
        self.plan = plan
        self.ui = ui
        self.cache = cache
        self.results: dict[str, dict[str, Any]] = {}
        self.outcomes: list[StageOutcome] = []
        self._memo: dict[str, Any] = {}

    def path(self, rel: str) -> Path:
        return self.plan.out_dir / rel

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def forget(self, key: str) -> None:
        self._memo.pop(key, None)

    def opt(self, name: str) -> Any:
        return self.plan.options[name]


def require(stage: str, module: str, *names: str) -> Any:
    """Import a stage's implementation; a missing module or name means "not built yet"."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise NotImplementedYetError(f"stage {stage!r} is not built yet: module {module} is not in this checkout") from exc
        raise
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise NotImplementedYetError(f"stage {stage!r} is not built yet: {module} has no {', '.join(missing)}")
    return mod if not names else (getattr(mod, names[0]) if len(names) == 1 else tuple(getattr(mod, n) for n in names))


def run_stages(ctx: BuildContext, stages: list[Stage]) -> bool:
    """Run stages in order through the cache; raises on failure after recording which stage failed."""
    versions = ctx.memo("versions", tool_versions)
    for index, stage in enumerate(stages):
        inputs = {
            "upstream": {u: ctx.cache.output_hash(u) for u in stage.upstream},
            "code": code_hash(("hadmc_deploy.pipeline", stage.run.__module__, *stage.modules)),
            "versions": versions,
            **stage.inputs(ctx),
        }
        key = ctx.cache.key(stage.name, inputs)
        hit = ctx.cache.lookup(stage.name, key)
        if hit is not None:
            ctx.results[stage.name] = hit.result
            status = "stopped" if hit.result.get("_stop") else ("skipped" if hit.result.get("_skipped") else "cached")
            detail = hit.result.get("_stop") or hit.result.get("_skipped") or hit.result.get("_summary", "")
            ctx.outcomes.append(StageOutcome(stage.name, "cached" if status == "cached" else status, f"cached: {detail}" if detail else "cached", 0.0, key))
            ctx.ui.log(f"[dim]{stage.name}: unchanged inputs, reused ({ctx.cache.manifest_path(stage.name).name})[/dim]")
            continue
        changed = ctx.cache.changed_inputs(stage.name, inputs) if ctx.cache.enabled else []
        ctx.ui.log(f"[bold cyan]{stage.name}[/bold cyan]" + (f" [dim](rerun: {', '.join(changed)} changed)[/dim]" if changed else ""))
        start = time.perf_counter()
        try:
            out = stage.run(ctx)
        except NotImplementedYetError as exc:
            ctx.outcomes.append(StageOutcome(stage.name, "not built yet", exc.one_line(), time.perf_counter() - start, key))
            _mark_rest(ctx, stages[index + 1 :], "not run", f"waits for {stage.name}")
            raise
        except BaseException as exc:
            text = exc.one_line() if isinstance(exc, HadmcError) else f"{type(exc).__name__}: {exc}"
            ctx.outcomes.append(StageOutcome(stage.name, "failed", text, time.perf_counter() - start, key))
            _mark_rest(ctx, stages[index + 1 :], "not run", f"{stage.name} failed")
            raise
        seconds = time.perf_counter() - start
        result = dict(out.result)
        if out.skipped:
            result["_skipped"] = out.skipped
        if out.stop:
            result["_stop"] = out.stop
        ctx.cache.record(stage.name, key, inputs, out.outputs, result, seconds)
        ctx.results[stage.name] = result
        status = "stopped" if out.stop else ("skipped" if out.skipped else "done")
        detail = out.stop or out.skipped or result.get("_summary", "")
        if changed:
            detail = f"{detail} (rerun: {', '.join(changed)} changed)"
        ctx.outcomes.append(StageOutcome(stage.name, status, detail, seconds, key))
    return True


def _mark_rest(ctx: BuildContext, rest: list[Stage], status: str, detail: str) -> None:
    for stage in rest:
        ctx.outcomes.append(StageOutcome(stage.name, status, detail))


def all_stages() -> list[Stage]:
    from hadmc_deploy.stages_compress import COMPRESS_STAGES
    from hadmc_deploy.stages_deploy import DEPLOY_STAGES

    return [*COMPRESS_STAGES, *DEPLOY_STAGES]


STAGE_NAMES = ("load", "trace", "latency model", "search", "surgery", "recover", "export", "calibrate", "quantize", "backend build", "evaluate", "report")


def build(plan: BuildPlan, ui: UI | None = None) -> dict[str, Any]:
    """Run a build; returns the report dict (see report.py for its schema).

    Raises the first stage's error (after writing a partial report), or
    `AccuracyGuardError` after the full report when --max-accuracy-drop is exceeded.
    """
    from hadmc_deploy.report import print_dry_run, print_summary, write_report

    ui = ui or quiet_ui()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan.save()
    cache = StageCache(plan.out_dir, enabled=bool(plan.options["cache"]))
    ctx = BuildContext(plan, ui, cache)
    stages = all_stages()
    if plan.dry_run:
        stages = [s for s in stages if s.dry_run]
    try:
        run_stages(ctx, stages)
    except BaseException:
        if not plan.dry_run:
            _write_partial(ctx)
        raise
    if plan.dry_run:
        return print_dry_run(ctx)
    report = write_report(ctx)
    ctx.outcomes.append(StageOutcome("report", "done", f"{plan.out_dir / 'report.md'}"))
    report["stages"] = [o.to_dict() for o in ctx.outcomes]
    write_report(ctx, report)  # with the report stage's own status
    print_summary(ctx, report)
    guard = report["accuracy"].get("guard") or {}
    if guard.get("exceeded") and not plan.options["allow_accuracy_drop"]:
        raise AccuracyGuardError(
            f"the final artifact lost {guard['drop']:.2f} points of accuracy (allowed {guard['allowed']:.2f}): {guard['where']}",
            hint="see report.md; pass --allow-accuracy-drop to accept it, or recover longer (--epochs)",
        )
    return report


def _write_partial(ctx: BuildContext) -> None:
    """After a failure, write what is known so the user sees which stage failed and why."""
    from hadmc_deploy.report import write_report

    try:
        write_report(ctx, partial=True)
    except Exception as exc:  # the original error matters more than a failed partial report
        ctx.ui.warn(f"could not write the partial report: {type(exc).__name__}: {exc}")


#: the batch the demo searches at: the demo CNN is overhead-bound at batch 1.
DEMO_SEARCH_BATCH = 32


def demo_build(checkpoint: Path, record: dict[str, Any], *, target: str, speedup: float, out_dir: Path, ui: UI, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The demo's build: a latency table measured here, short recovery on a training subset,
    512 calibration images, the full test set, every variant benchmarked.

    The demo model is small enough that at batch 1 its INT8 latency is mostly per-operator
    overhead (measured: pruning buys at most ~1.25x there), so the demo searches at batch 32,
    where it is compute-bound, and reports batch 1 and 32. A --speedup that is still out of
    reach is said so and the demo builds at the best reachable speedup (never silently).
    """
    from hadmc_deploy.config import merge_options
    from hadmc_deploy.errors import BudgetError
    from hadmc_deploy.plan import make_plan
    from hadmc_deploy.targets import get_target

    def plan_for(s: float) -> BuildPlan:
        options = merge_options(
            {
                "target": target,
                "out": str(out_dir),
                "speedup": s,
                "measure_lut": get_target(target).backend == "onnxruntime",
                "lut_minutes": 2.0,
                "train": record.get("train_data"),
                "eval": record.get("eval_data"),
                "train_limit": 30000,
                "epochs": 1.0,
                "calib_samples": 512,
                "batch": [1, 32],
                "runs": 30,
                "max_accuracy_drop": 1.0,
                "allow_accuracy_drop": True,
            }
        )
        search_shape = (DEMO_SEARCH_BATCH, *input_shape[1:])
        return make_plan(model=str(checkpoint), arch=None, arch_kwargs={}, input_shape=search_shape, trust_model=False, target=get_target(target), options=options)

    try:
        plan = plan_for(speedup)
        report = build(plan, ui)
    except BudgetError as exc:
        best = getattr(exc, "best_speedup", None)
        if best is None or best <= 1.05:
            raise
        # 0.9 of the best: the best plan keeps every group at or near its minimum width.
        reachable = max(1.01, round(0.9 * best, 2))
        ui.warn(f"--speedup {speedup:g} is out of reach for this model on this target ({exc.message}); the demo builds at --speedup {reachable:g} instead")
        plan = plan_for(reachable)
        report = build(plan, ui)
    return {"report": str(plan.out_dir / "report.json"), "speedup_requested": speedup, "speedup_built": plan.options["speedup"], "variants": report.get("variants", []), "accuracy": report.get("accuracy", {})}
