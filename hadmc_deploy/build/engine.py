"""The build engine: stages, their results, the context they share, and the cached runner.

A stage is a function from the build context to files in the build directory plus a
small JSON result. `run_stages` keys each stage on its inputs (upstream outputs by
content, the options it reads, data hashes, library versions and the source of every
project module the stage's module imports) and skips a stage whose key is unchanged,
so reruns are instant and `--resume` restarts where a build stopped. This module
imports no stage: `pipeline.py` composes the list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadmc_deploy.build.correction import PlanLoop
from hadmc_deploy.cache import StageCache, code_hash, tool_versions
from hadmc_deploy.errors import HadmcError
from hadmc_deploy.plan import BuildPlan
from hadmc_deploy.ui import UI

#: statuses a stage can end in (the report's schema lists the same).
STATUSES = ("done", "cached", "skipped", "stopped", "failed", "not run")


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
    run: Callable[[BuildContext], StageResult]
    #: options, data hashes and files this stage reads (beyond upstream stage outputs).
    inputs: Callable[[BuildContext], dict[str, Any]]
    upstream: tuple[str, ...] = ()
    #: whether --dry-run runs it (cheap stages that produce the plan to print).
    dry_run: bool = False

    @property
    def module(self) -> str:
        """The module that implements the stage: its import closure keys the cache."""
        return self.run.__module__


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
    and lazily built objects (the loaded model, data sets, the traced graph) that only exist
    when a stage that needs them actually runs (never on a full cache hit)."""

    def __init__(self, plan: BuildPlan, ui: UI, cache: StageCache) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.ui = ui
        self.cache = cache
        self.results: dict[str, dict[str, Any]] = {}
        self.outcomes: list[StageOutcome] = []
        #: the closed loop around the search (build/pipeline.py `plan_rounds`).
        self.loop = PlanLoop()
        self._lazy: dict[str, Any] = {}

    def path(self, rel: str) -> Path:
        return self.plan.out_dir / rel

    def lazy(self, key: str, make: Callable[[], Any]) -> Any:
        """Build an object once per build (`key` names it), on first use."""
        if key not in self._lazy:
            self._lazy[key] = make()
        return self._lazy[key]

    def forget(self, key: str) -> None:
        self._lazy.pop(key, None)


def stage_key_inputs(ctx: BuildContext, stage: Stage, versions: dict[str, str]) -> dict[str, Any]:
    return {
        "upstream": {u: ctx.cache.output_hash(u) for u in stage.upstream},
        "code": code_hash((stage.module,)),
        "versions": versions,
        **stage.inputs(ctx),
    }


def run_stages(ctx: BuildContext, stages: list[Stage]) -> None:
    """Run stages in order through the cache; re-raises a stage's error after recording it."""
    versions = ctx.lazy("versions", tool_versions)
    for index, stage in enumerate(stages):
        inputs = stage_key_inputs(ctx, stage, versions)
        key = ctx.cache.key(stage.name, inputs)
        hit = ctx.cache.lookup(stage.name, key)
        if hit is not None:
            ctx.results[stage.name] = hit.result
            status = "stopped" if hit.result.get("_stop") else ("skipped" if hit.result.get("_skipped") else "cached")
            detail = hit.result.get("_stop") or hit.result.get("_skipped") or hit.result.get("_summary", "")
            ctx.outcomes.append(StageOutcome(stage.name, "cached" if status == "cached" else status, f"cached: {detail}" if detail else "cached", 0.0, key))
            ctx.ui.step(f"[dim]{stage.name}: unchanged inputs, reused ({ctx.cache.manifest_path(stage.name).name})[/dim]")
            continue
        changed = ctx.cache.changed_inputs(stage.name, inputs) if ctx.cache.enabled else []
        ctx.ui.step(f"[bold cyan]{stage.name}[/bold cyan]" + (f" [dim](rerun: {', '.join(changed)} changed)[/dim]" if changed else ""))
        start = time.perf_counter()
        try:
            out = stage.run(ctx)
        except BaseException as exc:
            text = exc.one_line() if isinstance(exc, HadmcError) else f"{type(exc).__name__}: {exc}"
            ctx.outcomes.append(StageOutcome(stage.name, "failed", text, time.perf_counter() - start, key))
            ctx.outcomes.extend(StageOutcome(s.name, "not run", f"{stage.name} failed") for s in stages[index + 1 :])
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
