"""How the context fit builds its plans: exactly as a build deploys them, and by the TorchScript
exporter instead of the dynamo one where that runs the same ONNX Runtime kernels (a much faster
export: see `faster_exporter`). Split from `context.py`, which fits what these plans measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.latency.whole_model import TimingRanges


def build_deployed_artifact(
    model: nn.Module,
    graph: DependencyGraph,
    widths: dict[str, int],
    input_shape: tuple[int, ...],
    backend: Any,
    precision: str,
    workdir: Path,
    name: str,
    *,
    exporter: str = "deploy",
    float_onnx: Path | None = None,
    ranges: TimingRanges | None = None,
) -> tuple[Path, Any]:
    """(float ONNX of the plan, the backend's Artifact) exactly as a build deploys it; INT8 with
    `ranges` (shared between the plans of one fit) or ranges of its own."""
    from hadmc_deploy.latency.whole_model import export_for_timing, pruned_module, single_torch_thread

    if float_onnx is None:
        with single_torch_thread():
            float_onnx = export_for_timing(pruned_module(model, graph, widths), input_shape, workdir / f"{name}.onnx", exporter=exporter)
    out_dir = workdir / f"{name}-art"
    if precision == "int8":
        return float_onnx, (ranges or TimingRanges(input_shape)).build(backend, float_onnx, out_dir)
    return float_onnx, backend.build(BuildRequest(onnx_path=float_onnx, precision=precision, out_dir=out_dir, target=backend.default_target()))


def kernel_ops(artifact: Any, batch: int, threads: int | None) -> list[str]:
    """The ONNX Runtime kernels an artifact's session runs, in order (one profiled run)."""
    from hadmc_deploy.backends.ort_optimizer_choice import artifact_disabled_optimizers
    from hadmc_deploy.latency.ort_profile import profile_session

    prof = profile_session(Path(artifact.model_path), batch=batch, threads=threads, warmup=1, runs=1, disabled_optimizers=artifact_disabled_optimizers(artifact.metadata))
    return [k.op for k in prof.kernels]


def faster_exporter(model: nn.Module, graph: DependencyGraph, input_shape: tuple[int, ...], backend: Any, precision: str, workdir: Path,
                    deployed_full: Any, batch: int, threads: int | None, ranges: TimingRanges | None = None) -> str:
    """"fast" when the TorchScript export of the full model builds to a session running the same
    kernels, in the same order, as the deployed graph (`deployed_full`), else "deploy".

    Why: the dynamo exports of the plans were most of a build's table time (a ResNet-18 build at
    224, random weights, `--speedup 2 --measure-lut`: latency model stage 31.3 s with every plan
    exported as deployed, 20.8 s with this, minutes apart). With its pooling head written as the dynamo
    exporter writes it (`export_for_timing`), the TorchScript graph of the demo CNN, the grouped CNN,
    ResNet-18, MobileNetV2 and a VGG-like model with grouped and depthwise convs ran the very kernels
    of the deployed one, FP32 and INT8, as did MobileNetV3-small, EfficientNet-B0 and RegNetX of the
    model zoo at 64x64; ShuffleNetV2 and the Inception-like model in FP32 ran the same kernels in
    another order, DenseNet (Concat) and ConvNeXt (GELU) other kernels, and those are exported as
    deployed (compared once by hand; the demo CNN's check runs in the tests).

    Checked on the full plan only, where ONNX Runtime's NCHWc path fuses much alike; off it (the
    off-grid plans) other fusions apply: a random-weight model's off-grid plans ran other FP32
    kernels from the two exports until both gave a bias-less Conv feeding an Add a zero bias
    (`onnx_passes.bias_for_add_fusion`). `tools/check_offgrid_kernels.py` compares off-grid plans;
    EfficientNet-B0's INT8 45% plan still runs two Transposes more from TorchScript's graph. Checking
    an off-grid plan here would cost a deploy export of it per table (about 3 s at ResNet-18 224)."""
    from hadmc_deploy.latency.whole_model import single_torch_thread, torchscript_export

    try:
        with single_torch_thread():
            onnx_path = torchscript_export(model, input_shape, workdir / "full-torchscript.onnx")
    except Exception:  # the TorchScript exporter refuses this model: every plan is exported as deployed
        return "deploy"
    try:
        _, fast_full = build_deployed_artifact(model, graph, graph.full_widths(), input_shape, backend, precision, workdir, "full-torchscript", float_onnx=onnx_path, ranges=ranges)
    except Exception:  # e.g. its graph computes a weight the simplified deploy export folds (BiT's StdConv2d): INT8 refused it
        return "deploy"
    return "fast" if kernel_ops(fast_full, batch, threads) == kernel_ops(deployed_full, batch, threads) else "deploy"
