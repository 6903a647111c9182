"""What the stages read, built lazily once per build: the loaded model, the data sets, the
traced graph, the latency model and the model the deployment stages start from.

Lazy because a fully cached build must not load a model or a data set at all.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.metric import CLASSIFY, DETECT, infer_task
from hadmc_deploy.build.sample_budget import calib_images_to_load, images_in_memory
from hadmc_deploy.data import (
    ArrayDataset,
    Preprocess,
    available_memory_bytes,
    check_matches_model,
    source_identity,
    source_labels,
)
from hadmc_deploy.detection.dataset import is_detection_source, load_source
from hadmc_deploy.errors import DataError
from hadmc_deploy.export import ExportResult, export_onnx
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency import load_latency_model
from hadmc_deploy.loading import LoadedModel, load_model
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import quiet_ui

#: the data sets a build reads, by role.
DATA_KINDS = ("train", "calib", "eval", "data")


def loaded_model(ctx: BuildContext) -> LoadedModel:
    plan = ctx.plan
    return ctx.lazy("loaded", lambda: load_model(plan.model, plan.arch, plan.arch_kwargs, trust_model=plan.trust_model))


def dataset(ctx: BuildContext, kind: str) -> ArrayDataset | None:
    """The train / calib / eval / importance data set, preprocessed to the model's input (None if not given)."""

    def make() -> ArrayDataset | None:
        d = ctx.settings.data
        source = {"train": d.train, "calib": d.calib_source, "eval": d.eval, "data": ctx.settings.search.data or d.train}[kind]
        if not source:
            return None
        shape = ctx.plan.input_shape
        pre = Preprocess(resize=(shape[2], shape[3]), channels=shape[1], mean=d.mean, std=d.std)
        if kind == "calib":  # as many as its passes reach (build/sample_budget.py)
            # recovery reads them unless nothing was pruned, or --train feeds BatchNorm and the check
            recovery = not ctx.results.get("surgery", {}).get("_skipped") and (not d.train or task(ctx) == DETECT)
            limit = calib_images_to_load(d.calib_samples, macs_per_image(ctx), macs_per_image(ctx, "surgery"), recovery_reads=recovery,
                                         image_bytes=4 * math.prod(shape[1:]), int8_guarding=int8_guarding(ctx))
        else:
            limit = {"train": d.train_limit, "eval": d.eval_limit, "data": d.train_limit}[kind]
            if not is_detection_source(source):
                limit = limit_to_memory(ctx, kind, source, limit, 4 * math.prod(shape[1:]))
        data = load_source(source, pre, limit=limit, seed=d.seed)
        classes = ctx.results.get("load", {}).get("num_classes") if task(ctx) == CLASSIFY else None
        check_matches_model(data, shape, classes, role=kind if task(ctx) == CLASSIFY else "calib")
        return data

    return ctx.lazy(f"data:{kind}", make)


def labels_of(ctx: BuildContext, source: str) -> Any:
    """A source's labels read without its images (`data.source_labels`), once per build: the load
    stage checks them and the data sets are sized by their count."""
    return ctx.lazy(f"labels:{source}", lambda: source_labels(source))


def limit_to_memory(ctx: BuildContext, kind: str, source: str, limit: int | None, image_bytes: int) -> int | None:
    """The images of a --train or --eval set to load so that, preprocessed, they fit in memory
    (sample_budget.DATA_MEMORY_SHARE of what is available now): a seeded subset, with a warning, when
    no limit was given; a DataError when the given one does not fit (loading would be killed)."""
    fits = images_in_memory(available_memory_bytes(), image_bytes)
    count = len(labels_of(ctx, source))
    wanted = count if limit is None else min(limit, count)
    if fits is None or wanted <= fits:
        return limit
    flag = "--eval-limit" if kind == "eval" else "--train-limit"
    size = f"{wanted:,} images at {'x'.join(map(str, ctx.plan.input_shape[1:]))} take {wanted * image_bytes / 1e9:.1f} GB preprocessed"
    if limit is not None:
        raise DataError(f"{flag} {limit}: {size}, more than this machine can hold beside the build",
                        hint=f"pass {flag} {fits} or less")
    ctx.ui.warn(f"--{kind} {source}: {size}, more than this machine can hold beside the build: "
                f"using a seeded {fits:,} of them (pass {flag} to choose)")
    return fits


def task(ctx: BuildContext) -> str:
    """classify or detect (--task, else inferred from the data sources)."""
    d = ctx.settings.data
    return infer_task(d.task, [d.train, d.calib, d.eval])


def int8_guarding(ctx: BuildContext) -> bool:
    """Whether the INT8 check against FP32 is the accuracy guard itself: an INT8 classifier built
    without labelled --eval data, the guard on (its held-out images must then vouch for the bound)."""
    q = ctx.settings.quantization
    return ctx.plan.precision == "int8" and not q.allow_accuracy_drop and task(ctx) != DETECT and not ctx.settings.data.eval


def eval_leak_warning(ctx: BuildContext) -> str | None:
    """A warning when --eval names the images the build fits the model to: the accuracy, and the
    guard that judges on it, then read higher than on images the model has not seen."""
    d = ctx.settings.data
    if not d.eval:
        return None
    if d.train and source_identity(d.eval) == source_identity(d.train):
        return (f"--eval {d.eval} is the --train data: the accuracy and the accuracy guard are measured on the images recovery "
                "trained on, and read higher than on new images; pass held-out data to --eval (for example builtin:fashion-mnist:test)")
    if not d.train and d.calib_source and source_identity(d.eval) == source_identity(d.calib_source):
        return (f"--eval {d.eval} is the --calib data: without --train a pruned model is distilled on these images and INT8 is "
                "calibrated on them, so the accuracy is measured on what they were fitted to; pass held-out data to --eval")
    return None


def data_hash(ctx: BuildContext, kind: str) -> str | None:
    data = dataset(ctx, kind)
    return ctx.lazy(f"datahash:{kind}", lambda: data.sha256()) if data is not None else None


def graph(ctx: BuildContext) -> DependencyGraph:
    ignore = tuple(ctx.settings.search.ignore)
    return ctx.lazy("graph", lambda: trace(loaded_model(ctx).model, ctx.plan.input_shape, ignore=ignore, ui=ctx.ui))


def latency_model(ctx: BuildContext) -> Any:
    lut = ctx.results.get("latency model", {}).get("lut_path")
    # quiet: the latency stage says which model it is, once, where it matters
    return ctx.lazy("latency", lambda: load_latency_model(ctx.plan.target, lut_path=lut, ui=quiet_ui()))


def with_precision(specs: list[LayerSpec], precision: str) -> list[LayerSpec]:
    """Specs at a precision: the LUT holds INT8 and FP32 curves separately."""
    return [replace(s, precision=precision) for s in specs]


def final_torch_model(ctx: BuildContext) -> Any:
    """The PyTorch model the deployment stages start from: recovered, else pruned, else the original."""
    name = ctx.results.get("recover", {}).get("final")
    if name:
        path = ctx.path(name)
        return ctx.lazy(f"model:{name}", lambda: load_model(path).model.eval())
    return loaded_model(ctx).model


def macs_per_image(ctx: BuildContext, stage: str = "load") -> int | None:
    """Multiply-adds of one image through the model a stage recorded ("load": the original,
    "surgery": the pruned one); the stages record them at the input shape, its batch included."""
    macs = ctx.results.get(stage, {}).get("macs")
    return macs // max(1, ctx.plan.input_shape[0]) if macs else None


def primary_batch(ctx: BuildContext) -> int:
    """The batch the search optimised for when it is benchmarked, else the first benchmarked batch:
    the one the decide stage times the candidates at side by side."""
    search_batch = ctx.plan.input_shape[0]
    return search_batch if search_batch in ctx.plan.batch_sizes else ctx.plan.batch_sizes[0]


def baseline_export(ctx: BuildContext) -> ExportResult:
    """The original exported as it deploys (dynamic batch, the target's opset), once per build, into
    a scratch directory removed with the build's context: the latency stage's context fit profiles
    it, and the export stage verifies it on real images and ships it (`export.reverified`) instead of
    exporting the same model twice (inputs random here: no data set is loaded before the recover stage)."""

    def make() -> ExportResult:
        scratch = ctx.lazy("scratch", lambda: tempfile.TemporaryDirectory(prefix="hadmc-build-"))
        path, model, opset = Path(scratch.name) / "baseline.onnx", loaded_model(ctx).model, ctx.plan.target.opset
        key = reuse.model_key(model, ctx.plan.input_shape, opset) if ctx.cache.enabled else None
        ctx.lazy("export:baseline:key", lambda: key)  # the export stage replaces an entry that disagreed on real images
        stored = reuse.stored_files("export", key) if key else None
        if stored is not None:
            shutil.copyfile(stored[0][path.name], path)
            ctx.ui.log(f"the original's export reused from an earlier build of the same model ({stored[0][path.name].parent})")
            return replace(ExportResult.from_dict(stored[1]), path=str(path), reused=True)
        result = export_onnx(model, ctx.plan.input_shape, path, opset=opset, dynamic_batch=True, ui=ctx.ui)
        if key:
            reuse.store_files("export", key, [path], result.to_dict())
        return result

    return ctx.lazy("export:baseline", make)
