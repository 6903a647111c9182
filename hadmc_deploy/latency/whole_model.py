"""Whole-model timing of width plans: what the per-layer sum is corrected against and validated on.

A plan is applied by surgery, exported the way deployment exports it, built by
the target's backend and benchmarked there. Plans are timed in interleaved
rounds (A B C, A B C, ...) and each plan's latency is the median over rounds of
the per-round medians (and its fastest run, `min_ms`, the estimate to pair with
a "min" table), so a burst of load from other processes on a shared machine hits
every plan alike instead of skewing one.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.errors import DataError
from hadmc_deploy.graph.types import DependencyGraph, WidthPlan
from hadmc_deploy.timing import WHOLE_MODEL_SECONDS
from hadmc_deploy.ui import UI, quiet_ui


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """PyTorch on one thread for surgery and export beside timing (its idle OpenMP workers spin
    and would take a core from the ONNX Runtime sessions being timed), restored afterwards: a
    build's latency check once left it at 1 for the rest of the build, and a ResNet-18 BN
    recalibration took 135 s instead of about half that."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """The process's stdout (file descriptor 1) sent to the null device meanwhile: torch's
    TorchScript exporter prints its whole IR graph there, from C++, when it fails on a model
    (adaptive pooling to a non-divisor), and that failure is handled (the deploy exporter
    takes over), so the dump is noise in the user's terminal."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def pruned_module(model: nn.Module, graph: DependencyGraph, widths: dict[str, int]) -> nn.Module:
    """The physically narrower model for `widths` (the graph engineer's surgery; the model is not changed)."""
    from hadmc_deploy.surgery import apply

    full = graph.full_widths()
    keep = {g: int(k) for g, k in widths.items() if int(k) != full.get(g)}
    if not keep:
        return model
    pruned, _ = apply(model, graph, WidthPlan(keep=keep))
    return pruned


def export_for_timing(model: nn.Module, input_shape: tuple[int, ...], path: Path, *, exporter: str = "deploy", opset: int = 18) -> Path:
    """ONNX export of `model` for timing.

    "deploy": `hadmc_deploy.export.export_onnx` exactly as a build ships (dynamo, simplified,
    verified, the batch axis dynamic: at a fixed batch ONNX Runtime ran a channel shuffle's INT8
    graph with other kernels, 1.7-2.9x as long; tools/bench_timing_exports.py). "fast": the TorchScript
    exporter in eval mode at a fixed batch (~1.5 s; its dynamic-batch graph keeps shape
    arithmetic the deployed one does not), for timing many plans: ONNX Runtime's own
    graph optimizations (BN folding, conv+activation fusion, NCHWc layout) run on
    both, and its GlobalAveragePool head is rewritten as the dynamo exporter writes
    it (`onnx_passes.pooling_as_reduce_mean`), so the session executes the same
    kernels where the two exporters agree otherwise (`context_build.faster_exporter`
    checks that per model before the context fit relies on it).
    """
    model.eval()
    if exporter == "deploy":
        from hadmc_deploy.export import export_onnx

        export_onnx(model, input_shape, path, opset=opset, dynamic_batch=True, simplify=True)
        return path
    try:
        return torchscript_export(model, input_shape, path, opset)
    except Exception:  # the TorchScript exporter refuses some ops (adaptive pooling to a non-divisor): the deploy path does not
        return export_for_timing(model, input_shape, path, exporter="deploy", opset=opset)


def torchscript_export(model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 18) -> Path:
    """The TorchScript exporter's graph of `model` (eval mode, fixed batch) with its pooling head
    and its Conv biases written as deployed (`export_onnx` gives a bias-less Conv feeding an Add a
    zero bias); raises what the exporter raises."""
    import warnings

    import onnx

    from hadmc_deploy.fileio import atomic_path
    from hadmc_deploy.onnx_passes import bias_for_add_fusion, pooling_as_reduce_mean

    model.eval()
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        with native_stdout_silenced():
            torch.onnx.export(model, torch.zeros(input_shape), str(tmp), dynamo=False, opset_version=opset, input_names=["input"], output_names=["output"])
        onnx.save(bias_for_add_fusion(pooling_as_reduce_mean(onnx.load(str(tmp)))[0])[0], str(tmp))  # the pooling head and Conv biases as deployed
    return path


@dataclass
class TimedPlan:
    name: str
    widths: dict[str, int]
    median_ms: float
    round_ms: list[float]
    min_ms: float

    @property
    def min_round_ms(self) -> float:
        """The fastest round's median: the plan's time when the machine was least loaded."""
        return min(self.round_ms) if self.round_ms else self.median_ms

    def value(self, statistic: str) -> float:
        return self.min_ms if statistic == "min" else self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "widths": self.widths, "median_ms": self.median_ms, "min_ms": self.min_ms, "round_ms": self.round_ms}


def _timing_ranges(onnx_path: Path, input_shape: tuple[int, ...]) -> Any:
    """Activation ranges from random inputs: enough to build an INT8 model whose *speed* is
    measured (ranges change scales, never the graph), never used for accuracy."""
    import numpy as np

    from hadmc_deploy.calibration.collect import collect_ranges
    from hadmc_deploy.data import ArrayDataset

    n = max(16, input_shape[0])  # timing exports have a fixed batch: one full batch at least
    x = np.random.default_rng(0).standard_normal((n, *input_shape[1:])).astype(np.float32)
    data = ArrayDataset(x, np.zeros(n, np.int64), "random normal (INT8 timing only)")
    return collect_ranges(onnx_path, data, method="minmax", num_samples=n)


class TimingRanges:
    """Timing ranges collected once and reused by every plan whose tensors they name.

    Ranges are per tensor name and never change the graph, and the plans of one model exported by
    one exporter name their tensors alike whatever their widths: the first plan's ranges quantize
    the others (a plan they do not fit, another exporter's graph, gets its own). Collecting them
    anew for every plan was 5.4 s of a ResNet-18 build at 224 (nine INT8 timing builds). Speed does
    not depend on whose ranges: 70% and 40% plans of the demo CNN (96x96 b1, 28x28 b32) and of a
    ResNet-18 at 224 ran 0.993-1.017x as fast with the full plan's ranges as with their own (nine
    interleaved rounds each; scratch /tmp/exp14/shared_ranges_speed.py, 2026-12-02)."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape = input_shape
        self.known: list[Any] = []

    def build(self, backend: Any, onnx_path: Path, out_dir: Path) -> Any:
        """The backend's INT8 artifact of `onnx_path`, quantized with ranges that name its tensors."""
        for ranges in reversed(self.known):  # the latest first: the plans in hand are alike
            try:
                return backend.build(BuildRequest(onnx_path, "int8", out_dir, backend.default_target(), ranges=ranges))
            except DataError:  # no entry for some tensor of this graph: not this model's names
                continue
        self.known.append(_timing_ranges(onnx_path, self.input_shape))
        return backend.build(BuildRequest(onnx_path, "int8", out_dir, backend.default_target(), ranges=self.known[-1]))


def time_onnx_interleaved(
    onnx_paths: list[Path],
    backend: Any,
    *,
    batch: int,
    precision: str = "fp32",
    input_shape: tuple[int, ...] | None = None,
    rounds: int = 5,
    warmup: int = 5,
    runs: int = 20,
    clock: str = "wall",
    ui: UI | None = None,
) -> list[tuple[float, list[float], float]]:
    """(median over rounds, per-round medians, fastest run) per model, built and benchmarked by `backend`
    (each round at least `runs` runs and WHOLE_MODEL_SECONDS of them)."""
    ui = ui or quiet_ui()
    with tempfile.TemporaryDirectory(prefix="hadmc-wholemodel-") as tmp:
        artifacts = []
        if precision == "int8" and input_shape is None:
            raise ValueError("timing INT8 models needs input_shape (for their timing ranges)")
        ranges = TimingRanges(input_shape) if precision == "int8" and input_shape is not None else None
        for i, path in enumerate(ui.track(onnx_paths, "building models")):
            out = Path(tmp) / f"m{i}"
            artifacts.append(ranges.build(backend, path, out) if ranges is not None else backend.build(BuildRequest(path, precision, out, backend.default_target())))
        if clock == "cpu":  # single-thread CPU time of the built model (see measure.cpu_time_stats)
            from hadmc_deploy.backends.onnxruntime import make_session, random_feeds
            from hadmc_deploy.latency.measure import cpu_time_stats

            sessions = {id(a): make_session(a.model_path, threads=1) for a in artifacts}

            def bench(art: Any) -> Any:
                sess = sessions[id(art)]
                return cpu_time_stats(sess, random_feeds(sess, batch=batch), warmup, runs, batch, min_seconds=WHOLE_MODEL_SECONDS)
        else:

            def bench(art: Any) -> Any:
                try:
                    return backend.benchmark(art, batch=batch, warmup=warmup, runs=runs, min_seconds=WHOLE_MODEL_SECONDS)
                finally:
                    backend.release_sessions()  # one session alive at a time (Backend.release_sessions)

        rounds_ms: list[list[float]] = [[] for _ in artifacts]
        fastest = [float("inf")] * len(artifacts)
        with ui.progress("timing models (interleaved)", rounds * len(artifacts)) as bar:
            for _ in range(rounds):
                for i, art in enumerate(artifacts):
                    stats = bench(art)
                    rounds_ms[i].append(stats.p50_ms)
                    fastest[i] = min(fastest[i], stats.min_ms)
                    bar.advance()
    return [(statistics.median(r), r, f) for r, f in zip(rounds_ms, fastest, strict=True)]


def time_plans(
    model: nn.Module,
    graph: DependencyGraph,
    plans: dict[str, dict[str, int]],
    input_shape: tuple[int, ...],
    backend: Any,
    *,
    workdir: Path,
    rounds: int = 5,
    warmup: int = 5,
    runs: int = 20,
    make_module: Callable[[nn.Module, DependencyGraph, dict[str, int]], nn.Module] = pruned_module,
    exporter: str = "deploy",
    clock: str = "wall",
    precision: str = "fp32",
    exported: dict[str, Path] | None = None,
    ui: UI | None = None,
) -> list[TimedPlan]:
    """Prune, export, build and time every plan (name -> widths), interleaved; a plan named in
    `exported` is timed from that float ONNX file instead of being exported again."""
    ui = ui or quiet_ui()
    workdir.mkdir(parents=True, exist_ok=True)
    exported = exported or {}
    paths = []
    with single_torch_thread():  # ORT sessions keep their own thread count
        for name, widths in ui.track(list(plans.items()), "exporting plans"):
            given = exported.get(name)
            paths.append(given if given is not None else export_for_timing(make_module(model, graph, widths), input_shape, workdir / f"{name}.onnx", exporter=exporter))
        timed = time_onnx_interleaved(
            paths, backend, batch=input_shape[0], precision=precision, input_shape=input_shape, rounds=rounds, warmup=warmup, runs=runs, clock=clock, ui=ui
        )
    return [TimedPlan(name, widths, med, r, f) for (name, widths), (med, r, f) in zip(plans.items(), timed, strict=True)]


def fit_table_correction(model: nn.Module, graph: DependencyGraph, shape: tuple[int, ...], table: Any, out: Path, backend: Any, align: int, ui: UI | None = None) -> dict[str, Any]:
    """Time the whole model at 100/75/50% uniform width in the table's precision and fit
    `measured = scale * layer sum + offset` (what per-layer timing cannot see: cross-layer
    fusion, layout kept between layers, per-run overhead); saves the table."""
    from dataclasses import replace

    from hadmc_deploy.latency.lut import Correction
    from hadmc_deploy.latency.predictor import LutLatencyModel, fit_regularised

    ui = ui or quiet_ui()
    plans = {}
    for ratio in (1.0, 0.75, 0.5):
        plans[f"uniform{int(ratio * 100)}"] = {
            g.id: min(g.width, max(g.min_width, align, round(g.width * ratio / align) * align)) for g in graph.prunable_groups
        }
    precision, batch = table.meta.precision, table.meta.batch
    with tempfile.TemporaryDirectory(prefix="hadmc-lut-") as tmp:
        timed = time_plans(
            model, graph, plans, shape, backend, workdir=Path(tmp), rounds=3, exporter="fast",
            clock=table.meta.method.get("clock", "wall"), precision=precision, ui=ui,
        )
    table.correction = None
    raw = LutLatencyModel(table, source=str(out))
    sums = [sum(raw.predict([replace(s, precision=precision, batch=batch) for s in graph.layer_specs(t.widths)]).per_layer_ms) for t in timed]
    stat = table.statistic
    fit = fit_regularised(sums, [t.value(stat) for t in timed])  # refuses ill-conditioned scale+offset fits
    scale, offset = fit.scale, fit.offset_ms
    table.correction = Correction(scale, offset, [{"plan": t.name, "layer_sum_ms": s, "measured_ms": t.value(stat), "statistic": stat, "how": fit.how} for t, s in zip(timed, sums, strict=True)])
    table.save(out)
    ui.log(f"correction: measured = {scale:.3f} x layer sum {offset:+.3f} ms (fitted on {len(timed)} whole-model timings, {precision})")
    return table.correction.to_dict()
