"""The latency table's context fit with the TensorRT probe, against the FAKE tensorrt module.

Fake-module tests: they show that `fit_context` builds each plan as a TensorRT engine, reads
each weighted layer's in-context time from the IProfiler through the layer map and times the
engines in the same interleaved rounds. They are not proof that an engine builds or that the factors
are right on a GPU: `tools/check_tensorrt.py` (its context-fit step) checks that on a host with TensorRT.
"""

from __future__ import annotations

import pytest
import torch
from tensorrt_fake_module import fake_installer, make_fake_trt
from torch import nn

from hadmc_deploy.backends.base import LatencyStats
from hadmc_deploy.backends.tensorrt import TensorRTBackend
from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.context import fit_context
from hadmc_deploy.latency.context_probe import probe_for
from hadmc_deploy.latency.lut import LatencyTable, LutMeta
from hadmc_deploy.latency.measure import specs_for_plans
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS


class _Net(nn.Module):
    """1x8x8 in, 4 out: the shapes the fake engine binds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.relu = nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu2(self.conv2(self.relu(self.conv1(x))))), 1))


#: what the fake engine's profiler reports per execution (fused names, as TensorRT writes them).
LAYERS = [("/conv1/Conv + /relu/Relu", 1.0), ("/conv2/Conv + /relu2/Relu", 2.0), ("/pool/GlobalAveragePool", 0.2), ("/fc/Gemm", 0.5)]


@pytest.fixture
def fake_trt(monkeypatch):
    install = fake_installer(monkeypatch, cpu_buffers=True)
    return install(make_fake_trt("10.3.0", runnable=True, layer_times=[LAYERS]))


@pytest.mark.parametrize("fc_price_ms", [None, 1e-5])
def test_fake_module_context_fit_reads_the_tensorrt_profiler(tmp_path, fake_trt, fc_price_ms):
    """Fake-module test: both plans built as engines, the profiler's fused layers attributed to
    their weighted ONNX nodes (the pool's time split as glue), the engines timed in every round.
    With a linear layer priced far below its in-context time (its factor clipped) the fitted plans
    still predict what they measured: the clip moves a layer's share, not the plan's total."""
    torch.manual_seed(0)
    model = _Net().eval()
    graph = trace(model, (2, 1, 8, 8))
    group = graph.prunable_groups[0]
    plans = {"full": graph.full_widths(), "half": {**graph.full_widths(), group.id: group.width // 2}}
    table = LatencyTable(LutMeta(target="t4", backend="tensorrt", backend_version="10.3.0", device={}, threads=None, batch=2, precision="fp32", alignment=8))
    for spec in specs_for_plans(graph, plans.values(), precision="fp32", batch=2):
        ms = fc_price_ms if (fc_price_ms is not None and spec.op == "linear") else 1e-7 * spec.macs() + 0.01
        table.add(spec, ms, ms, 10, ms)
    backend = TensorRTBackend()
    backend.available = lambda: (True, "the fake tensorrt module stands in for a GPU")  # type: ignore[method-assign]
    timed = []

    def benchmark(artifact, batch, warmup, runs, min_seconds=0.0):  # noqa: ANN001, ANN202  (CUDA events: no GPU here)
        timed.append(artifact.path.name)
        return LatencyStats.from_samples([3.0] * runs, batch=batch, warmup=warmup)

    backend.benchmark = benchmark  # type: ignore[method-assign]
    ctx = fit_context(table, model, graph, (2, 1, 8, 8), backend, plans=plans, rounds=2, runs=3, exporter="fast")
    assert table.context is ctx and [row["plan"] for row in ctx.fitted_on] == ["full", "half"]
    for row in ctx.fitted_on:
        assert row["kernel_sum_ms"] == pytest.approx(3.7)  # every reported ms lands on a weighted node
        assert row["measured_ms"] == 3.0
        assert row["predicted_ms"] == pytest.approx(3.0, rel=0.05)  # the fit reproduces what it was fitted on
    assert any(c[0] == "report_to_profiler" for c in fake_trt.calls)
    # each engine timed once per round: 2 profiled rounds, then whole-model rounds up to the build's count
    assert timed.count("full-art") == WHOLE_MODEL_ROUNDS and timed.count("half-art") == WHOLE_MODEL_ROUNDS
    assert all(e["aligned_curve"] or e["unaligned_curve"] for e, layer in zip(ctx.factors, graph.layers, strict=True) if layer.spec.op in ("conv", "linear"))


def test_probe_for_names_what_it_cannot_profile():
    class Other:
        name = "openvino"

    with pytest.raises(LatencyModelError, match="no in-context profiler for the openvino backend"):
        probe_for(Other(), None, "wall")
    with pytest.raises(LatencyModelError, match="wall clock"):
        probe_for(TensorRTBackend(), None, "cpu")
