"""INT8 timing builds share their activation ranges between the plans of one model and exporter."""

from __future__ import annotations

from pathlib import Path

import torch

from hadmc_deploy.backends import get
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency import whole_model
from hadmc_deploy.latency.whole_model import TimingRanges, export_for_timing, pruned_module
from hadmc_deploy.models.demo import demo_cnn


def test_plans_of_one_exporter_reuse_the_first_plans_ranges_and_another_exporter_gets_its_own(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    graph = trace(model, shape)
    narrow = {g.id: max(g.min_width, g.width // 2) for g in graph.prunable_groups}
    full_fast = export_for_timing(model, shape, tmp_path / "full-fast.onnx", exporter="fast")
    half_fast = export_for_timing(pruned_module(model, graph, narrow), shape, tmp_path / "half-fast.onnx", exporter="fast")
    full_deploy = export_for_timing(model, shape, tmp_path / "full-deploy.onnx", exporter="deploy")
    collected: list[str] = []
    real = whole_model._timing_ranges

    def counting(path: Path, input_shape: tuple[int, ...]):  # noqa: ANN202
        collected.append(Path(path).name)
        return real(path, input_shape)

    monkeypatch.setattr(whole_model, "_timing_ranges", counting)
    backend = get("onnxruntime")
    ranges = TimingRanges(shape)
    arts = [ranges.build(backend, p, tmp_path / f"art{i}") for i, p in enumerate((full_fast, half_fast, full_deploy))]
    # the narrower plan is quantized with the full plan's ranges; the dynamo graph names its tensors otherwise
    assert collected == ["full-fast.onnx", "full-deploy.onnx"] and len(ranges.known) == 2
    for art in arts:
        assert art.metadata["precision"] == "int8" and Path(art.model_path).is_file()
