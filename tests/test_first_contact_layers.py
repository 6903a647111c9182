"""First-contact models that failed before: a normalisation with buffers in forward, a 1-D conv
net fed flattened images, a LayerNorm over (C, H, W) in INT8, weight-/spectral-normed convs."""

from __future__ import annotations

import warnings
from collections import namedtuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.export import export_onnx
from hadmc_deploy.graph.check import prune_equivalence
from hadmc_deploy.graph.labels import info_from_full
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.loading import load_model
from hadmc_deploy.reparam import bake_reparametrizations

torch.set_num_threads(1)


class NormalisingNet(nn.Module):
    """`(x - self.mean) / self.std` with registered buffers, as many deployed models do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def test_buffers_used_in_arithmetic_trace_and_prune() -> None:
    g = trace(NormalisingNet(), (1, 3, 8, 8))
    assert g.group("c1").prunable and g.group("c2").prunable
    res = prune_equivalence(NormalisingNet(), (1, 3, 8, 8), 0.5, seed=1, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4


class Audio1d(nn.Module):
    """Conv1d/BatchNorm1d over the flattened pixels: a 1-D conv net reading (N, 1, H, W) images."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU(),
                               nn.Conv1d(16, 24, 5, stride=2, padding=2), nn.BatchNorm1d(24), nn.ReLU(),
                               nn.Conv1d(24, 24, 3, padding=1, groups=24), nn.ReLU(), nn.Conv1d(24, 32, 1))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.f(x.flatten(2)).mean(-1))


def test_a_single_constant_channel_keeps_no_channel_axis() -> None:
    info = info_from_full(np.zeros((1, 1, 784), dtype=np.int64))
    assert info is not None and info.axes == () and info.labels.shape == ()


def test_conv1d_net_traces_with_one_d_geometry() -> None:
    g = trace(Audio1d(), (1, 1, 16, 16))
    first, second = g.layer_specs()[:2]
    # priced as (1, k) convs over a (1, L) image: no padding on the missing axis
    assert first.kernel == (1, 9) and first.stride == (1, 4) and first.padding == (0, 4)
    assert first.in_hw == (1, 256) and first.out_hw == (1, 64)
    assert second.padding == (0, 2) and second.out_hw == (1, 32)
    res = prune_equivalence(Audio1d(), (1, 1, 16, 16), 0.5, seed=4, graph=g)
    assert res.max_abs_diff < 1e-4 and res.zeroing_effect > 1e-4


class LayerNormCHW(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.LayerNorm([8, 6, 6])
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.n1(self.c1(x))))


def test_layernorm_over_chw_quantizes_for_onnxruntime(tmp_path) -> None:  # noqa: ANN001
    """ORT 1.32's int32-bias adjustment failed on a multi-axis LayerNorm bias: it stays in float."""
    model = LayerNormCHW().eval()
    with torch.no_grad():
        model.n1.bias.uniform_(-1, 1)
    path = tmp_path / "m.onnx"
    export_onnx(model, (1, 1, 6, 6), path, dynamic_batch=False, exporters=("legacy",))
    x = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(torch.randn(64, 1, 6, 6, generator=torch.Generator().manual_seed(1)).numpy(), np.zeros(64, np.int64), "random")
    ranges = collect_ranges(path, data, method="minmax", num_samples=64)
    out = write_qdq(path, ranges, tmp_path / "q.onnx", form="qdq_u8s8")
    q = onnx.load(str(out))
    assert any(n.op_type == "LayerNormalization" for n in q.graph.node)
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 0
    runs = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0] for p in (path, out)}
    assert np.abs(runs[out] - runs[path]).max() < 0.1 * np.abs(runs[path]).max()


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecated hook-based forms warn
            self.a = nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 16, 3, padding=1))
            self.b = nn.utils.parametrizations.spectral_norm(nn.Conv2d(16, 16, 3, padding=1))
            self.c = nn.utils.weight_norm(nn.Conv2d(16, 16, 1))
            self.d = nn.utils.spectral_norm(nn.Conv2d(16, 16, 1))
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.a, self.b, self.c, self.d):
            x = F.relu(conv(x))
        return self.fc(x.mean((2, 3)))


def normed() -> Normed:
    return Normed()


@pytest.fixture()
def normed_state(tmp_path):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    model = Normed().train()
    for _ in range(3):  # spectral norm's power iterations move its u/v
        model(torch.randn(4, 1, 8, 8))
    path = tmp_path / "normed.pth"
    torch.save(model.state_dict(), path)
    return model.eval(), path


def test_weight_and_spectral_norms_are_baked_on_load(normed_state) -> None:  # noqa: ANN001
    original, path = normed_state
    loaded = load_model(path, f"{__name__}:normed")
    assert sorted(loaded.info["baked_reparametrizations"]) == ["a.weight", "b.weight", "c.weight", "d.weight"]
    assert set(loaded.model.state_dict()) == {f"{m}.{p}" for m in "abcd" for p in ("weight", "bias")} | {"fc.weight", "fc.bias"}
    # plain trainable parameters again (weight norm's baked value was left a buffer)
    assert {n for n, _ in loaded.model.named_parameters()} == set(loaded.model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), original(x), atol=1e-6)
    g = trace(loaded.model, (1, 1, 8, 8))
    assert g.group("a").prunable and g.group("c").prunable


def test_a_baked_model_survives_a_second_load_of_its_plain_state() -> None:
    """`remove_spectral_norm` leaves a load hook that asked a baked state_dict for `weight_orig`."""
    model = Normed().eval()
    assert len(bake_reparametrizations(model)) == 4
    again = Normed().eval()
    bake_reparametrizations(again)
    again.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})


class GatedNet(nn.Module):
    """A gated linear unit on channels, reflection padding on a grayscale input, a returned log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.c1 = nn.Conv2d(1, 32, 3)
        self.z = nn.ConstantPad2d((0, 1, 0, 1), 0.0)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c1(self.pad(x)).chunk(2, 1)
        x = self.z(a * torch.sigmoid(b))
        return F.log_softmax(self.fc(F.relu(self.c2(x)).mean((2, 3))), dim=1)


def test_gated_unit_pads_and_a_returned_log_softmax_prune_without_warnings() -> None:
    g = trace(GatedNet(), (1, 1, 12, 12))
    assert g.warnings == []
    gate = g.group("c1")
    # each gate channel lies once in each half: pruning it shrinks both halves alike
    assert gate.prunable and gate.width == 16 and g.group("c2").prunable
    for seed in range(3):
        res = prune_equivalence(GatedNet(), (1, 1, 12, 12), 0.5, seed=seed, graph=g)
        assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4
        assert res.pruned.c1.out_channels == 16 and res.pruned.c2.in_channels == 8


class SoftmaxInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.softmax(self.c1(x), dim=1))


def test_a_softmax_over_channels_inside_the_model_still_warns() -> None:
    g = trace(SoftmaxInside(), (1, 3, 4, 4))
    assert not g.group("c1").prunable and any("softmax over the channel axis" in w for w in g.warnings)


def test_a_constant_pad_other_than_zero_leaves_the_group_prunable_not_exact() -> None:
    model = GatedNet()
    model.z = nn.ConstantPad2d((0, 1, 0, 1), 0.5)
    g = trace(model, (1, 1, 12, 12))
    gate = g.group("c1")
    assert gate.prunable and not gate.exact and "pads with 0.5" in gate.reason


class FunctionalPads(nn.Module):
    def __init__(self, channel_pad: bool) -> None:
        super().__init__()
        self.channel_pad = channel_pad
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(10 if channel_pad else 8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(self.c1(x), (1, 1, 1, 1), mode="replicate")
        if self.channel_pad:
            y = F.pad(y, (0, 0, 0, 0, 0, 2))  # two more channels: sizes the code fixes
        return self.c2(y)


def test_functional_pads_pass_channels_unless_they_pad_the_channel_axis() -> None:
    assert trace(FunctionalPads(False), (1, 3, 4, 4)).group("c1").prunable
    locked = trace(FunctionalPads(True), (1, 3, 4, 4))
    assert not locked.group("c1").prunable


class StdConv2d(nn.Conv2d):
    """BiT's weight-standardised conv: the weight is standardised in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        return F.conv2d(x, (self.weight - mean) / torch.sqrt(var + 1e-10), self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """timm's TF-"SAME" conv: pads by the input size in forward, then F.conv2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.size()[-2:]
        kh, kw = self.weight.size()[-2:]
        pad_h = max((-(-ih // self.stride[0]) - 1) * self.stride[0] + kh - ih, 0)
        pad_w = max((-(-iw // self.stride[1]) - 1) * self.stride[1] + kw - iw, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class LoRAConv(nn.Conv2d):
    """A conv subclass with tensors of its own: traced through, never pruned as a plain conv."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.lora = nn.Parameter(torch.zeros(self.out_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight + self.lora, self.bias, self.stride, self.padding)


class Subclassed(nn.Module):
    def __init__(self, conv: type[nn.Conv2d]) -> None:
        super().__init__()
        self.c1, self.n1 = conv(3, 16, 3, padding=1, bias=False), nn.GroupNorm(4, 16)
        self.c2 = conv(16, 24, 3, stride=2, padding=1) if conv is not Conv2dSame else conv(16, 24, 3, stride=2)
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.n1(self.c1(x)))
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


@pytest.mark.parametrize("conv", [StdConv2d, Conv2dSame])
def test_conv_subclasses_prune_as_convs_and_quantize(conv, tmp_path) -> None:  # noqa: ANN001
    g = trace(Subclassed(conv), (1, 3, 12, 12))
    c1 = g.group("c1")
    # pruned by Conv2d's rule; what the overridden forward does is not known: not called exact
    assert c1.prunable and not c1.exact and f"{conv.__name__} overrides Conv2d.forward" in c1.reason
    model = Subclassed(conv).eval()
    pruned = prune_equivalence(model, (1, 3, 12, 12), 0.0, graph=g).pruned  # a runnable copy
    assert pruned.c1.out_channels == 16
    # the TorchScript export keeps the standardisation as nodes on initializers: folded before quantizing
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(2, 3, 12, 12),), str(path), dynamo=False, do_constant_folding=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n"}})
    data = ArrayDataset(torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(1)).numpy(), np.zeros(32, np.int64), "random")
    out = write_qdq(path, collect_ranges(path, data, method="minmax", num_samples=32), tmp_path / "q.onnx", form="qdq_u8s8")
    x = data.x[:4]
    runs = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] for p in (path, out)}
    assert np.abs(runs[out] - runs[path]).max() < 0.1 * np.abs(runs[path]).max() + 1e-3


def test_a_conv_subclass_with_tensors_of_its_own_is_traced_through() -> None:
    g = trace(Subclassed(LoRAConv), (1, 3, 12, 12))
    assert not any(group.prunable for group in g.groups)
    assert any("'conv2d' (conv2d): operation not understood" in w for w in g.warnings)


Pair = namedtuple("Pair", ["logits", "features"])


@torch.jit.script
def scaled_relu(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.relu(x) * scale


class MaskedNamed(nn.Module):
    """`torch.where(y > 0, y, 0.1 * y)`, a TorchScript helper, a namedtuple of outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> Pair:
        y = self.c1(x)
        y = torch.where(y > 0, y, 0.1 * y)
        y = scaled_relu(self.c2(y), 1.5)
        f = self.c3(y).mean((2, 3))
        return Pair(self.fc(f), f)


def test_masks_scripted_helpers_and_namedtuple_outputs() -> None:
    g = trace(MaskedNamed(), (1, 3, 8, 8))
    assert g.group("c1").prunable  # the comparison mask follows its input's channels
    res = prune_equivalence(MaskedNamed(), (1, 3, 8, 8), 0.5, seed=0, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4
    # the TorchScript function is recorded as one opaque call, named, and its channels kept
    assert not g.group("c2").prunable
    assert any("TorchScript function scaled_relu" in w for w in g.warnings)
    # both members of the returned namedtuple are outputs: kept, without a warning about the namedtuple
    assert not g.group("c3").prunable and not g.group("fc").prunable and "output" in g.group("fc").reason
    assert not any("Pair" in w for w in g.warnings)


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c(x).mean((2, 3)).view(1, -1))


def test_a_batch_size_written_in_forward_is_named_with_its_line(tmp_path) -> None:  # noqa: ANN001
    from hadmc_deploy.batch_check import check_batch_free
    from hadmc_deploy.errors import GraphError

    with pytest.raises(GraphError) as info:
        check_batch_free(FixedBatch(), (1, 1, 8, 8))
    text = info.value.one_line()
    assert "runs at batch 1 but not at batch 2" in text and ".view(1, -1)" in text and "x.flatten(1)" in text
    check_batch_free(Audio1d().eval(), (1, 1, 16, 16))  # a model that takes any batch passes
    with pytest.raises(GraphError, match="runs at batch 1 but not at batch 2"):
        export_onnx(FixedBatch(), (1, 1, 8, 8), tmp_path / "m.onnx", dynamic_batch=True, exporters=("legacy",))


class DepthMultiplierNet(nn.Module):
    """Depthwise convs with a channel multiplier of 2 (groups = in channels, out = 2 x in): every
    group of this net runs through one, so it was "nothing in this model can be pruned"."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=16, bias=True), nn.BatchNorm2d(32), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.dw2 = nn.Conv2d(24, 72, 3, padding=1, groups=24, bias=False)
        self.fc = nn.Linear(72, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw2(self.pw(self.dw(self.c1(x)))).mean((2, 3)))


def test_depthwise_channel_multiplier_prunes_with_its_input_channel() -> None:
    from hadmc_deploy.graph.types import WidthPlan
    from hadmc_deploy.surgery import apply

    torch.manual_seed(0)
    model = DepthMultiplierNet().eval()
    g = trace(model, (1, 1, 12, 12))
    assert g.group("c1.0").prunable and g.group("pw.0").prunable
    assert {grp.id for grp in g.prunable_groups} == {"c1.0", "pw.0"}  # the multiplier outputs go with their inputs
    widths = {"c1.0": 8, "pw.0": 12}
    specs = {layer.name: layer.spec_at(widths) for layer in g.layers}
    assert (specs["dw.0"].in_channels, specs["dw.0"].out_channels, specs["dw.0"].groups) == (8, 16, 8)
    assert (specs["pw.0"].in_channels, specs["dw2"].out_channels, specs["fc"].in_channels) == (16, 36, 36)
    res = prune_equivalence(DepthMultiplierNet().eval(), (1, 1, 12, 12), 0.5, seed=1, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4
    pruned, _ = apply(model, g, WidthPlan(keep=widths))
    assert (pruned.dw[0].in_channels, pruned.dw[0].out_channels, pruned.dw[0].groups) == (8, 16, 8)
    assert (pruned.dw2.in_channels, pruned.dw2.out_channels, pruned.dw2.groups) == (12, 36, 12)
    assert pruned(torch.randn(2, 1, 12, 12)).shape == (2, 10)


class SubPixelNet(nn.Module):
    """Space-to-depth on the input image (`F.pixel_unshuffle`), a depth-to-space inside (`nn.PixelShuffle`)
    and another at the output, as super-resolution and YOLO-style focus stems write them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 32, 3, padding=1), nn.Conv2d(8, 24, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.head = nn.Conv2d(24, 12, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(F.relu(self.a(F.pixel_unshuffle(x, 2))))  # 32 channels -> 8 at twice the size
        return F.pixel_shuffle(self.head(F.relu(self.b(y))), upscale_factor=2)  # 12 channels -> a 3-channel image


def test_pixel_shuffle_ties_each_output_channels_inputs() -> None:
    torch.manual_seed(0)
    g = trace(SubPixelNet().eval(), (1, 1, 8, 8))
    assert g.group("a").prunable and g.group("b").prunable and not g.group("head").prunable
    assert g.group("a").width == 8  # 32 channels, tied in fours by the shuffle
    specs = {layer.name: layer.spec_at({"a": 4, "b": 12}) for layer in g.layers}
    assert (specs["a"].out_channels, specs["b"].in_channels, specs["head"].in_channels) == (16, 4, 12)
    res = prune_equivalence(SubPixelNet().eval(), (1, 1, 8, 8), 0.5, seed=1, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4
