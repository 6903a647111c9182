"""Timing exports stand for the deployed graph: a dynamic batch axis as shipped, one profile per
distinct plan, and the latency check's exporter only where the context fit checked it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx
import torch

from hadmc_deploy.backends import get
from hadmc_deploy.build.stages.latency_check import checked_exporter
from hadmc_deploy.export import export_onnx
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.context_build import kernel_ops
from hadmc_deploy.latency.context_plans import calibration_plans, same_plan
from hadmc_deploy.latency.whole_model import TimingRanges, export_for_timing
from hadmc_deploy.models.zoo import ShuffleCNN


def test_the_deploy_timing_export_runs_the_deployed_graphs_kernels(tmp_path: Path) -> None:
    """In INT8 the channel shuffle's graph at a fixed batch ran other kernels (1.7-2.9x as long) than
    the dynamic-batch graph that ships: the timing export must be the shipped graph."""
    torch.manual_seed(0)
    model, shape = ShuffleCNN().eval(), (1, 1, 28, 28)
    timing = export_for_timing(model, shape, tmp_path / "timing.onnx", exporter="deploy")
    assert onnx.load(str(timing)).graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the batch axis is symbolic
    deployed = tmp_path / "deployed.onnx"
    export_onnx(model, shape, deployed, dynamic_batch=True)  # as the build's export stage ships it
    backend, ranges = get("onnxruntime"), TimingRanges(shape)
    ops = [kernel_ops(ranges.build(backend, path, tmp_path / f"{path.stem}-int8"), batch=1, threads=None) for path in (timing, deployed)]
    assert "QLinearConv" in ops[0] and ops[0] == ops[1]


def test_a_per_group_plan_at_full_width_is_not_profiled_as_a_second_full_plan() -> None:
    """Groups narrower than groups x step stay at full width in the per-group plans: such a plan,
    naming only the prunable groups, is the full plan and is profiled once."""
    graph = trace(ShuffleCNN().eval(), (1, 1, 28, 28))
    plans = calibration_plans(graph, 16)
    assert [name for name, widths in plans.items() if same_plan(graph, widths, graph.full_widths())] == ["full"]
    assert same_plan(graph, {g.id: g.width for g in graph.prunable_groups}, graph.full_widths())
    assert not same_plan(graph, {graph.prunable_groups[0].id: 1}, graph.full_widths())


def test_the_latency_check_takes_torchscript_only_where_the_context_fit_checked_it() -> None:
    def table(*exporters: str) -> SimpleNamespace:
        rows = [{"plan": "full", "exporter": "deploy"}] + [{"plan": f"p{i}", "exporter": e} for i, e in enumerate(exporters)]
        return SimpleNamespace(context=SimpleNamespace(fitted_on=rows))

    assert checked_exporter(table("fast", "fast")) == "fast"
    assert checked_exporter(table("deploy", "deploy")) == "deploy"
    assert checked_exporter(table()) == "deploy"  # only the full plan: nothing checked
    assert checked_exporter(SimpleNamespace(context=None)) == "deploy"  # a table without a context fit
    assert checked_exporter(None) == "deploy"  # the analytic model
