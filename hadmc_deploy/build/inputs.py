"""What the stages read, built lazily once per build: the loaded model, the data sets, the
traced graph, the latency model and the model the deployment stages start from.

Lazy because a fully cached build must not load a model or a data set at all.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.metric import CLASSIFY, infer_task
from hadmc_deploy.data import ArrayDataset, Preprocess, check_matches_model
from hadmc_deploy.detection.dataset import load_source
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency import load_latency_model
from hadmc_deploy.loading import LoadedModel, load_model
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import quiet_ui

#: the data sets a build reads, by role.
DATA_KINDS = ("train", "calib", "eval", "data")


#: calibration images loaded beyond the ones the ranges see: what the guard's held-out checks
#: (INT8 vs FP32, 256: `Int8Options.verify_samples`), BN recalibration (1,024 drawn from the
#: whole set: `stages.recover.BN_CALIB_SAMPLES`) and the pruned model's agreement check (the
#: images past BN's share: `build/fidelity.py`) draw on. Loading the whole source instead
#: preprocessed all 60,000 Fashion-MNIST images to 3x224x224 float32 for a ResNet-18 build
#: (36 GB) and was killed for memory; 4,096 extra (2.5 GB at 224) spent 12 s loading and 8 s
#: hashing of a ResNet-18 build. tests/test_data_sources.py checks the two still fit.
CALIB_BEYOND_RANGES = 1280


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
        limit = {"train": d.train_limit, "calib": d.calib_samples + CALIB_BEYOND_RANGES, "eval": d.eval_limit, "data": d.train_limit}[kind]
        data = load_source(source, pre, limit=limit, seed=d.seed)
        classes = ctx.results.get("load", {}).get("num_classes") if task(ctx) == CLASSIFY else None
        check_matches_model(data, shape, classes, role=kind if task(ctx) == CLASSIFY else "calib")
        return data

    return ctx.lazy(f"data:{kind}", make)


def task(ctx: BuildContext) -> str:
    """classify or detect (--task, else inferred from the data sources)."""
    d = ctx.settings.data
    return infer_task(d.task, [d.train, d.calib, d.eval])


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


def samples_within(macs_per_sample: int | None, *, most: int, least: int, macs_budget: float) -> int:
    """How many images a pass over data should take: `most`, fewer when they would cost more than
    `macs_budget` multiply-adds, never fewer than `least` (unknown cost: `most`)."""
    if not macs_per_sample:
        return most
    return int(min(most, max(least, macs_budget // macs_per_sample)))
