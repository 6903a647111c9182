"""The compression half of the build: load -> trace -> latency model -> search -> surgery -> recover.

Each stage reads the plan and upstream files, writes its own files, and returns a
small JSON result; the in-memory objects (the model, the traced graph, data sets)
come from the context's memo so a cached stage never forces them to be built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.fileio import sha256_file, write_json_atomic
from hadmc_deploy.pipeline import BuildContext, Stage, StageResult, require

# -- lazily built objects shared by stages ------------------------------------------------


def loaded_model(ctx: BuildContext) -> Any:
    from hadmc_deploy.loading import load_model

    plan = ctx.plan
    return ctx.memo("loaded", lambda: load_model(plan.model, plan.arch, plan.arch_kwargs, trust_model=plan.trust_model))


def num_classes(ctx: BuildContext) -> int:
    return int(ctx.results["load"]["num_classes"])


def dataset(ctx: BuildContext, kind: str) -> Any:
    """The train / calib / eval data set, preprocessed to the model's input (None if not given)."""

    def make() -> Any:
        from hadmc_deploy.data import Preprocess, check_matches_model, load_data

        source = ctx.plan.data_sources()[kind]
        if not source:
            return None
        shape = ctx.plan.input_shape
        opts = ctx.plan.options
        pre = Preprocess(resize=(shape[2], shape[3]), channels=shape[1], mean=opts["mean"], std=opts["std"])
        limit = {"train": opts["train_limit"], "calib": None, "eval": opts["eval_limit"]}[kind]
        data = load_data(source, pre, limit=limit, seed=opts["seed"])
        check_matches_model(data, shape, ctx.results.get("load", {}).get("num_classes"))
        return data

    return ctx.memo(f"data:{kind}", make)


def data_hash(ctx: BuildContext, kind: str) -> str | None:
    data = dataset(ctx, kind)
    return ctx.memo(f"datahash:{kind}", lambda: data.sha256()) if data is not None else None


def graph(ctx: BuildContext) -> Any:
    trace = require("trace", "hadmc_deploy.graph.trace", "trace")
    return ctx.memo("graph", lambda: trace(loaded_model(ctx).model, ctx.plan.input_shape, ignore=tuple(ctx.opt("ignore") or ()), ui=ctx.ui))


def latency_model(ctx: BuildContext) -> Any:
    load_latency_model = require("latency model", "hadmc_deploy.latency", "load_latency_model")
    lut = ctx.results.get("latency model", {}).get("lut_path")
    return ctx.memo("latency", lambda: load_latency_model(ctx.plan.target, lut_path=lut, ui=ctx.ui))


def with_precision(specs: list[Any], precision: str) -> list[Any]:
    """Specs at the deployed precision: the LUT holds INT8 and FP32 curves separately."""
    from dataclasses import replace

    return [replace(s, precision=precision) for s in specs]


# -- stages -----------------------------------------------------------------------------


def _load(ctx: BuildContext) -> StageResult:
    from hadmc_deploy.profile import profile_model

    loaded = loaded_model(ctx)
    prof = profile_model(loaded.model, ctx.plan.input_shape)
    result = {
        "kind": loaded.kind,
        "source": loaded.source,
        "arch": loaded.arch,
        "arch_kwargs": loaded.arch_kwargs,
        "model_sha256": ctx.plan.model_sha256,
        "params": prof.params,
        "macs": prof.macs,
        "num_classes": int(prof.output_shape[-1]) if prof.output_shape else None,
        "_summary": f"{loaded.kind} via {loaded.arch}: {prof.params:,} params, {prof.macs:,} MACs",
    }
    return StageResult(result)


def _trace(ctx: BuildContext) -> StageResult:
    g = graph(ctx)
    out = ctx.path("graph.json")
    layers = [{"name": layer.name, "spec": layer.spec.to_dict(), "in_groups": list(layer.in_groups), "out_group": layer.out_group} for layer in g.layers]
    write_json_atomic(out, {"input_shape": list(g.input_shape), "groups": [grp.to_dict() for grp in g.groups], "layers": layers, "warnings": list(g.warnings)})
    for warning in g.warnings:
        ctx.ui.warn(warning)
    prunable = len(g.prunable_groups)
    return StageResult(
        {"groups": len(g.groups), "prunable": prunable, "layers": len(g.layers), "warnings": list(g.warnings), "_summary": f"{len(g.groups)} channel groups ({prunable} prunable), {len(g.layers)} costed layers"},
        [out],
    )


def _latency_inputs(ctx: BuildContext) -> dict[str, Any]:
    lut = ctx.opt("lut") or ctx.plan.target.lut_path
    return {
        "target": ctx.plan.target.to_dict(),
        "lut": lut,
        "lut_sha256": sha256_file(lut) if lut and Path(lut).is_file() else None,
        "measure_lut": ctx.opt("measure_lut"),
        "lut_minutes": ctx.opt("lut_minutes") if ctx.opt("measure_lut") else None,
        "precision": ctx.plan.precision,
    }


def _latency(ctx: BuildContext) -> StageResult:
    outputs: list[Path] = []
    lut = ctx.opt("lut") or ctx.plan.target.lut_path
    how = "given with --lut" if ctx.opt("lut") else ("from the target profile" if lut else "")
    measured = None
    if ctx.opt("measure_lut"):
        # One file per (precision, batch): a table only holds one, and each is reused by later builds.
        lut_out = ctx.path(f"lut-{ctx.plan.precision}-b{ctx.plan.input_shape[0]}.json")
        measured = _measure_lut(ctx, lut_out)
        lut, how = str(lut_out), f"measured here with --measure-lut on {ctx.plan.target.backend} ({measured['measured']} new, {measured['cached']} reused points)"
        outputs.append(lut_out)
    ctx.results["latency model"] = {"lut_path": lut}
    lm = latency_model(ctx)
    specs = with_precision(graph(ctx).layer_specs(), ctx.plan.precision)
    pred = lm.predict(specs)
    label = {"lut": "measured LUT", "analytic": "analytic roofline (no LUT: datasheet numbers, not measured)", "lut+analytic": "measured LUT, analytic for specs outside it"}.get(pred.source, pred.source)
    result = {
        "source": pred.source,
        "label": label,
        "lut_path": lut,
        "lut_how": how or "none: the analytic model from the target's datasheet",
        "baseline_predicted_ms": float(pred.total_ms),
        "precision": ctx.plan.precision,
        "measured": measured,
        "_summary": f"{label}; baseline predicted {pred.total_ms:.3f} ms at batch {ctx.plan.input_shape[0]}",
    }
    if pred.source != "lut":
        ctx.ui.warn(f"latency model: {label}" + ("; pass --lut or --measure-lut for measured numbers" if pred.source == "analytic" else ""))
    return StageResult(result, outputs)


def _measure_lut(ctx: BuildContext, lut_out: Path) -> dict[str, Any]:
    """Time this model's layers over a width grid through the target's backend (resumable)."""
    from hadmc_deploy.errors import LatencyModelError

    measure = require("latency model", "hadmc_deploy.latency.measure", "specs_for_graph", "open_table", "measure_specs", "backend_timer", "get_backend")
    specs_for_graph, open_table, measure_specs, backend_timer, get_backend = measure
    target = ctx.plan.target
    backend = get_backend(target.backend)
    ok, reason = backend.available()
    if not ok:
        raise LatencyModelError(f"--measure-lut needs the {target.backend} backend on this machine: {reason}", hint=f"measure on the {target.name} host with `hadmc-deploy lut`, then pass --lut")
    batch, precision = ctx.plan.input_shape[0], ctx.plan.precision
    warmup, runs = 5, 20
    table = open_table(lut_out, target, backend, precision=precision, batch=batch, warmup=warmup, runs=runs, ui=ctx.ui)
    specs = specs_for_graph(graph(ctx), ctx.plan.round_to, precision=precision, batch=batch)
    report = measure_specs(specs, table, lut_out, backend_timer(backend, warmup, runs), budget_minutes=ctx.opt("lut_minutes"), ui=ctx.ui)
    out = report.to_dict()
    if not report.stopped_by_budget and not report.failed and (table.correction is None or report.measured):
        # Without the whole-model correction a layer sum misprices the fused graph (for INT8
        # badly: a 2.00x prediction measured 1.06x on the demo), so fit it on every complete table.
        from hadmc_deploy.latency.whole_model import fit_table_correction

        out["correction"] = fit_table_correction(loaded_model(ctx).model, graph(ctx), ctx.plan.input_shape, table, lut_out, backend, ctx.plan.round_to, ctx.ui)
    ctx.forget("latency")
    return out


def _search_inputs(ctx: BuildContext) -> dict[str, Any]:
    learned = ctx.opt("search") in ("amc", "ppo")
    needs_data = ctx.opt("importance") in ("taylor", "gradient") or learned
    return {k: ctx.opt(k) for k in ("speedup", "latency_ms", "search", "importance", "seed", "min_keep_ratio")} | {
        "round_to": ctx.plan.round_to,
        "train": data_hash(ctx, "train") if needs_data else None,
        "eval": data_hash(ctx, "eval") if learned else None,
        "widths": sha256_file(ctx.opt("widths")) if ctx.opt("widths") else None,
    }


def _search(ctx: BuildContext) -> StageResult:
    if ctx.opt("speedup") is None and ctx.opt("latency_ms") is None and ctx.opt("widths") is None:
        return StageResult({"pruned": False}, skipped="no latency budget (--speedup or --latency-ms): the model keeps its widths")
    score_groups = require("search", "hadmc_deploy.importance", "score_groups")
    search = require("search", "hadmc_deploy.search", "search")
    g = graph(ctx)
    data = None
    if ctx.opt("importance") in ("taylor", "gradient"):
        data = dataset(ctx, "train")
        if data is None:
            from hadmc_deploy.errors import UsageError

            raise UsageError(f"--importance {ctx.opt('importance')} needs --train data")
        data = data.subset(512, seed=ctx.opt("seed"))
    scores = score_groups(loaded_model(ctx).model, g, criterion=ctx.opt("importance"), data=data)
    ctx._memo["scores"] = scores
    lm = _PrecisionModel(latency_model(ctx), ctx.plan.precision)
    if ctx.opt("widths"):
        result = _given_plan(ctx, g, lm)
    else:
        rl_options = None
        if ctx.opt("search") in ("amc", "ppo"):  # learned policies score candidates on real data
            rl_options = {"model": loaded_model(ctx).model, "val_data": dataset(ctx, "eval"), "calib_data": dataset(ctx, "train"), "seed": ctx.opt("seed")}
        result = search(
            g, scores, lm, method=ctx.opt("search"), speedup=ctx.opt("speedup"), latency_ms=ctx.opt("latency_ms"),
            round_to=ctx.plan.round_to, min_keep_ratio=ctx.opt("min_keep_ratio"), rl_options=rl_options, ui=ctx.ui,
        )
    result.print_plan(ctx.ui)
    plan_path, scores_path = ctx.path("width_plan.json"), ctx.path("scores.npz")
    from hadmc_deploy.fileio import atomic_path, write_text_atomic

    write_text_atomic(plan_path, result.plan.to_json())
    with atomic_path(scores_path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{gid: np.asarray(s) for gid, s in scores.items()})
    data_out = _json_safe(result.to_dict())
    data_out["pruned"] = any(c.after != c.before for c in result.changes)
    data_out["_summary"] = f"{result.method}: predicted {result.baseline_ms:.3f} -> {result.predicted_ms:.3f} ms ({result.predicted_speedup:.2f}x)"
    return StageResult(data_out, [plan_path, scores_path])


def _json_safe(obj: Any) -> Any:
    """NaN (e.g. "importance kept" of a given plan) becomes null: report.json stays strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _given_plan(ctx: BuildContext, g: Any, lm: Any) -> Any:
    """--widths: the user's plan instead of a search, priced by the same latency model."""
    from hadmc_deploy.errors import UsageError
    from hadmc_deploy.graph.types import WidthPlan
    from hadmc_deploy.search.base import GroupChange, SearchResult

    try:
        plan = WidthPlan.from_json(Path(ctx.opt("widths")).read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--widths {ctx.opt('widths')} is not a width plan ({exc})", hint='write {"keep": {"group id": channels}}') from exc
    groups = {grp.id: grp for grp in g.groups}
    for gid, keep in plan.keep.items():
        if gid not in groups:
            raise UsageError(f"--widths names group {gid!r}, which this model does not have", hint=f"groups: {', '.join(groups)}")
        if not (1 <= keep <= groups[gid].width) or (keep != groups[gid].width and not groups[gid].prunable):
            raise UsageError(f"--widths keeps {keep} channels of group {gid!r} (width {groups[gid].width}, prunable: {groups[gid].prunable})")
    full = g.full_widths()
    base = lm.predict(g.layer_specs()).total_ms
    pred = lm.predict(g.layer_specs(plan.keep))
    changes = [GroupChange(gid, full[gid], keep, base - lm.predict(g.layer_specs({gid: keep})).total_ms, float("nan")) for gid, keep in plan.keep.items()]
    return SearchResult(plan=WidthPlan(keep=dict(plan.keep)), predicted_ms=pred.total_ms, baseline_ms=base, budget_ms=pred.total_ms, method="given (--widths)", source=pred.source, changes=changes, importance_kept=float("nan"), predictor_calls=len(changes) + 2)


class _PrecisionModel:
    """Predicts at the build's precision whatever precision the graph recorded in its specs."""

    def __init__(self, inner: Any, precision: str) -> None:
        self.inner = inner
        self.precision = precision

    def predict(self, specs: list[Any]) -> Any:
        return self.inner.predict(with_precision(specs, self.precision))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _surgery(ctx: BuildContext) -> StageResult:
    if not ctx.results["search"].get("pruned"):
        return StageResult({"pruned": False}, skipped="nothing to narrow: the width plan keeps every group")
    apply = require("surgery", "hadmc_deploy.surgery", "apply")
    save_pruned = require("surgery", "hadmc_deploy.pruned_checkpoint", "save_pruned")
    from hadmc_deploy.graph.types import WidthPlan
    from hadmc_deploy.profile import profile_model

    loaded = loaded_model(ctx)
    plan = WidthPlan.from_json(ctx.path("width_plan.json").read_text())
    with np.load(ctx.path("scores.npz")) as npz:
        scores = {k: npz[k] for k in npz.files}
    pruned, filled = apply(loaded.model, graph(ctx), plan, scores=scores)
    pruned.eval()
    out = ctx.path("pruned.pth")
    save_pruned(out, pruned, loaded, filled, ctx.plan.input_shape, extra={"stage": "surgery"})
    prof = profile_model(pruned, ctx.plan.input_shape)
    ctx._memo["pruned_model"] = pruned
    base = ctx.results["load"]
    return StageResult(
        {
            "params": prof.params,
            "macs": prof.macs,
            "params_ratio": prof.params / base["params"],
            "macs_ratio": prof.macs / base["macs"],
            "_summary": f"{base['params']:,} -> {prof.params:,} params ({100 * (1 - prof.params / base['params']):.1f}% fewer), MACs x{prof.macs / base['macs']:.2f}",
        },
        [out],
    )


def final_torch_model(ctx: BuildContext) -> Any:
    """The PyTorch model the deployment stages start from: recovered, else pruned, else the original."""
    from hadmc_deploy.loading import load_model

    name = ctx.results.get("recover", {}).get("final")
    if name:
        path = ctx.path(name)
        return ctx.memo(f"model:{name}", lambda: load_model(path).model.eval())
    return loaded_model(ctx).model


def _recover_inputs(ctx: BuildContext) -> dict[str, Any]:
    keys = ("epochs", "lr", "batch_size", "distill", "seed", "train_limit")
    return {k: ctx.opt(k) for k in keys} | {"train": data_hash(ctx, "train"), "calib": data_hash(ctx, "calib"), "eval": data_hash(ctx, "eval")}


def _recover(ctx: BuildContext) -> StageResult:
    if ctx.results["surgery"].get("_skipped"):
        return StageResult({"mode": "none", "final": None}, skipped="no pruned model to recover")
    from hadmc_deploy.evaluate import torch_accuracy
    from hadmc_deploy.loading import load_model

    save_pruned = require("recover", "hadmc_deploy.pruned_checkpoint", "save_pruned")
    teacher = loaded_model(ctx)
    student = load_model(ctx.path("pruned.pth")).model
    train, evald = dataset(ctx, "train"), dataset(ctx, "eval")
    acc: dict[str, float | None] = {"baseline": None, "pruned": None, "recovered": None}
    if evald is not None:
        acc["baseline"] = torch_accuracy(teacher.model, evald)
        acc["pruned"] = torch_accuracy(student, evald)
    recover, options_cls = require("recover", "hadmc_deploy.recover", "recover", "RecoveryOptions")
    if train is not None:
        n_val = min(2000, max(1, len(train) // 10))
        order = np.random.default_rng(ctx.opt("seed")).permutation(len(train))
        from hadmc_deploy.data import ArrayDataset

        val_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        tr = ArrayDataset(train.x[tr_idx], train.y[tr_idx], f"{train.source}[train split]", train.preprocess)
        val = ArrayDataset(train.x[val_idx], train.y[val_idx], f"{train.source}[{n_val} held out]", train.preprocess)
    else:
        calib = dataset(ctx, "calib")
        if calib is None:
            return StageResult({"mode": "none", "accuracy": acc, "final": "pruned.pth"}, [ctx.path("pruned.pth")], skipped="no --train or --calib data: the pruned model is used as is")
        # No training data: `recover` only re-estimates BatchNorm statistics on these images.
        tr, val = None, calib.subset(2048, seed=ctx.opt("seed"))
    options = _recovery_options(options_cls, ctx, len(tr) if tr is not None else 0)
    outcome = recover(student, teacher.model, tr, val, options, ctx.ui)
    student = outcome.model
    mode = outcome.mode
    detail = _plain(outcome)
    student.eval()
    if evald is not None:
        acc["recovered"] = torch_accuracy(student, evald)
    out = ctx.path("recovered.pth")
    pruned_ckpt = load_model(ctx.path("pruned.pth"))
    _save_like(save_pruned, out, student, teacher, ctx, pruned_ckpt)
    ctx.forget("model:recovered.pth")
    summary = f"{mode}" + (f": eval accuracy {acc['pruned']:.2f}% -> {acc['recovered']:.2f}% (baseline {acc['baseline']:.2f}%)" if acc["recovered"] is not None else "")
    return StageResult({"mode": mode, "accuracy": acc, "detail": detail, "final": "recovered.pth", "_summary": summary}, [out])


def _recovery_options(options_cls: Any, ctx: BuildContext, n_train: int) -> Any:
    """RecoveryOptions from the plan. Fractional --epochs (0.5) become one epoch capped at that share of its steps."""
    import math

    epochs = float(ctx.opt("epochs"))
    steps_per_epoch = max(1, math.ceil(n_train / ctx.opt("batch_size")))
    whole = max(1, math.ceil(epochs))
    cap = max(1, math.ceil(epochs * steps_per_epoch)) if epochs < 1 else None
    return options_cls(epochs=whole, lr=ctx.opt("lr"), batch_size=ctx.opt("batch_size"), distill=ctx.opt("distill"), seed=ctx.opt("seed"), max_steps_per_epoch=cap)


def _save_like(save_pruned: Any, out: Path, model: Any, teacher: Any, ctx: BuildContext, pruned_ckpt: Any) -> None:
    from hadmc_deploy.graph.types import WidthPlan

    plan = WidthPlan.from_json(ctx.path("width_plan.json").read_text())
    info_plan = pruned_ckpt.info.get("plan") if isinstance(pruned_ckpt.info, dict) else None
    if isinstance(info_plan, dict):
        info_plan = json.dumps(info_plan)
    if isinstance(info_plan, str):
        plan = WidthPlan.from_json(info_plan)  # the surgery's plan, with the kept indices filled in
    save_pruned(out, model, teacher, plan, ctx.plan.input_shape, extra={"stage": "recover"})


def _plain(obj: Any) -> dict[str, Any]:
    """A JSON-able view of a result dataclass (tensors, modules and paths dropped or stringified)."""
    import dataclasses

    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, (int, float, str, bool, type(None), list, dict)):
                out[f.name] = value
            elif isinstance(value, Path):
                out[f.name] = str(value)
        return out
    return {}


COMPRESS_STAGES = [
    Stage("load", _load, lambda c: {"model": c.plan.model_sha256, "arch": c.plan.arch, "arch_kwargs": c.plan.arch_kwargs, "input_shape": list(c.plan.input_shape)}, (), ("hadmc_deploy.loading", "hadmc_deploy.profile"), dry_run=True),
    Stage("trace", _trace, lambda c: {"ignore": list(c.opt("ignore") or ())}, ("load",), ("hadmc_deploy.graph.trace",), dry_run=True),
    Stage("latency model", _latency, _latency_inputs, ("trace",), ("hadmc_deploy.latency", "hadmc_deploy.latency.lut"), dry_run=True),
    Stage("search", _search, _search_inputs, ("trace", "latency model"), ("hadmc_deploy.search", "hadmc_deploy.importance"), dry_run=True),
    Stage("surgery", _surgery, lambda c: {}, ("search",), ("hadmc_deploy.surgery", "hadmc_deploy.pruned_checkpoint")),
    Stage("recover", _recover, _recover_inputs, ("surgery",), ("hadmc_deploy.recover",)),
]
