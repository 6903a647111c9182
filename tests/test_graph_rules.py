"""The dependency graph: groups, couplings, index mappings, layer specs, locks and warnings."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hadmc_deploy.errors import GraphError
from hadmc_deploy.graph.align import round_width, uniform_plan_keep
from hadmc_deploy.graph.check import prune_equivalence
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.models.demo import demo_cnn
from hadmc_deploy.models.resnet import resnet18
from hadmc_deploy.models.zoo import LayerNorm2d, convnext_tiny, regnet_x_200mf, shufflenet_v2_x1_0, unetish
from hadmc_deploy.surgery import apply

torch.set_num_threads(1)


def _members(graph, gid: str) -> set[tuple[str, int]]:  # noqa: ANN001
    return {(m["tensor"], m["axis"]) for m in graph.group(gid).members}


def test_resnet_residual_coupling_and_specs() -> None:
    g = trace(resnet18(), (2, 3, 64, 64))
    stem = _members(g, "conv1")
    # the stem's channels run through every residual add of layer1: coupled with each block's conv2 output
    assert {("conv1.weight", 0), ("layer1.0.conv2.weight", 0), ("layer1.1.conv2.weight", 0), ("layer2.0.conv1.weight", 1)} <= stem
    assert ("layer2.0.downsample.0.weight", 1) in stem
    assert g.group("fc").prunable is False and "output" in g.group("fc").reason
    assert g.group("input").prunable is False
    conv1 = next(layer for layer in g.layers if layer.name == "conv1")
    assert conv1.spec.in_hw == (64, 64) and conv1.spec.out_hw == (32, 32) and conv1.spec.batch == 2
    assert conv1.spec.activation == "relu" and conv1.spec.kernel == (7, 7) and conv1.spec.stride == (2, 2)
    assert {layer.spec.op for layer in g.layers} >= {"conv", "linear", "add", "maxpool", "globalpool"}


def test_layer_specs_follow_width_plans_exactly() -> None:
    """graph.layer_specs(widths) must equal the specs of the really pruned model, re-traced."""
    for model, shape in ((resnet18(), (1, 3, 32, 32)), (shufflenet_v2_x1_0(repeats=(2, 2, 2)), (1, 3, 32, 32)), (unetish(), (1, 3, 32, 32))):
        g = trace(model, shape)
        keep = uniform_plan_keep(g, 0.5)
        pruned, _ = apply(model, g, WidthPlan(keep=keep))
        predicted = [(s.op, s.in_channels, s.out_channels, s.groups) for s in g.layer_specs(keep)]
        actual = [(s.op, s.in_channels, s.out_channels, s.groups) for s in trace(pruned, shape).layer_specs()]
        assert predicted == actual
        full = [(s.in_channels, s.out_channels) for s in g.layer_specs()]
        assert full != [(s[1], s[2]) for s in predicted]


def test_flatten_linear_maps_each_channel_to_hw_features() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(1), nn.Linear(8 * 4 * 4, 5)).eval()
    g = trace(model, (1, 3, 4, 4))
    lin = next(m for m in g.group("0").members if m["tensor"] == "3.weight")
    assert lin["axis"] == 1 and lin["mapping"] == "each channel -> 16 features from 0"
    pruned, plan = apply(model, g, WidthPlan(keep={"0": 3}))
    assert pruned[3].in_features == 3 * 16 and pruned[0].out_channels == 3
    layer = next(layer for layer in g.layers if layer.spec.op == "linear")
    assert layer.in_multiplier == 16 and layer.spec_at({"0": 3}).in_channels == 48


def test_concat_offset_mapping() -> None:
    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.c = nn.Conv2d(10, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    g = trace(Cat(), (1, 3, 8, 8))
    mapping = {m["tensor"]: m["mapping"] for m in g.group("b").members}
    assert mapping["c.weight"] == "offset 4"
    concat = next(layer for layer in g.layers if layer.spec.op == "concat")
    assert concat.spec_at({"a": 2, "b": 3}).out_channels == 5


def test_channel_shuffle_couples_and_splits_balance() -> None:
    g = trace(shufflenet_v2_x1_0(repeats=(2, 2, 2)), (1, 3, 32, 32))
    assert not g.warnings
    merged = g.group("2.0.branch1.1.0")
    assert merged.prunable and merged.cell_mode == "balanced" and merged.granularity >= 2
    tensors = {m["tensor"] for m in merged.members}
    # the shuffle ties branch1's and branch2's outputs, and the next unit's branch output
    assert {"2.0.branch1.1.0.weight", "2.0.branch2.2.0.weight", "2.1.branch2.2.0.weight"} <= tensors


def test_grouped_conv_granularity() -> None:
    g = trace(regnet_x_200mf(), (1, 3, 32, 32))
    gconv_group = next(gr for gr in g.groups if any(m["tensor"] == "1.0.f.1.0.weight" and m["axis"] == 0 for m in gr.members))
    assert gconv_group.granularity == 24 // 8 and gconv_group.cell_mode == "balanced"
    assert round_width(gconv_group.width, 13, 1, gconv_group.granularity, gconv_group.min_width) % 3 == 0
    with pytest.raises(GraphError, match="alignment"):
        apply(regnet_x_200mf(), g, WidthPlan(keep={gconv_group.id: 13}))


def test_groupnorm_blocks_and_layernorm_inexact() -> None:
    g = trace(unetish(), (1, 3, 16, 16))
    enc1 = g.group("enc1.0")
    assert enc1.cell_mode == "blocks" and enc1.granularity == 4
    pruned, plan = apply(unetish(), g, WidthPlan(keep={"enc1.0": 16}))
    assert pruned.enc1[1].num_groups == 4 and pruned.enc1[1].num_channels == 16 and pruned.enc1[2].num_parameters == 16
    cn = trace(convnext_tiny(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64)), (1, 3, 32, 32))
    stream = cn.group("0.0")
    assert stream.prunable and not stream.exact and "LayerNorm" in stream.reason
    assert any(m["tensor"] == "1.0.layer_scale" for m in stream.members)
    assert all(gr.exact for gr in cn.groups if gr.id.endswith("pwconv1"))


def test_instance_norm_with_affine_weights_is_sliced_and_without_them_stays() -> None:
    def net(affine: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=affine), nn.ReLU(),
                             nn.Conv2d(16, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()

    g = trace(net(True), (1, 3, 12, 12))
    assert g.group("0").prunable and any(m["tensor"] == "1.weight" for m in g.group("0").members)
    pruned, _ = apply(net(True), g, WidthPlan(keep={"0": 8}))
    assert pruned[1].weight.shape == (8,) and pruned[1].num_features == 8
    plain = trace(net(False), (1, 3, 12, 12)).group("0")
    assert not plain.prunable and "no affine weights" in plain.reason


def test_a_module_called_twice_ties_the_channels_of_every_call() -> None:
    """A conv applied to its own output ties its first input (the previous layer's channels) to its
    output: one slicing serves both calls (when only the second call was handled, surgery sliced its
    weight to 12 inputs while its output stayed 16 and the model failed on its second call). Was
    locked; now the calls share one group, pruned exactly."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.shared, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.bn(self.a(x))
            x = self.bn(torch.relu(self.shared(torch.relu(self.shared(x)))))  # conv and norm both reused
            return self.fc(x.mean((2, 3)))

    g = trace(Twice(), (1, 3, 8, 8))
    assert [grp.id for grp in g.prunable_groups] == ["a"]  # a, shared (both calls) and bn: one group
    assert [layer.spec_at({"a": 8}).in_channels for layer in g.layers if layer.module == "shared"] == [8, 8]
    pruned = prune_equivalence(Twice().eval(), (2, 3, 8, 8), 0.5, seed=0, graph=g)
    assert pruned.max_abs_diff < 1e-5 and pruned.zeroing_effect > 1e-4


def test_a_head_shared_by_pyramid_levels_ties_the_levels() -> None:
    """RetinaNet/FCOS-style: one conv head run on every level of a feature pyramid. The levels'
    lateral convs are tied channel by channel (the head slices its input once); the head's output
    is one group over all calls."""

    class SharedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.lat1, self.lat2 = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 16, 1)
            self.head = nn.Conv2d(16, 12, 3, padding=1)
            self.cls = nn.Conv2d(12, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p1, p2 = self.lat1(x), self.lat2(torch.relu(self.stem(x)))
            outs = [self.cls(torch.relu(self.head(p))).flatten(2) for p in (p1, p2)]
            return torch.cat(outs, 2)

    g = trace(SharedHead(), (1, 3, 8, 8))
    assert g.group("lat1").prunable and g.group("head").prunable and g.group("stem").prunable
    assert {grp.id for grp in g.prunable_groups} == {"stem", "lat1", "head"}  # lat2 tied to lat1 channel by channel
    heads = [layer for layer in g.layers if layer.module == "head"]
    assert len(heads) == 2 and all(layer.spec_at({"lat1": 8, "head": 6}).out_channels == 6 for layer in heads)
    res = prune_equivalence(SharedHead().eval(), (2, 3, 8, 8), 0.5, seed=0, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4


def test_unknown_op_locks_with_warning_naming_node() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.cumsum(self.a(x), dim=1))

    g = trace(Odd(), (1, 3, 4, 4))
    assert not g.group("a").prunable and "not understood" in g.group("a").reason
    assert any("cumsum" in w and "node" in w for w in g.warnings)
    # shown once per UI however often the model is traced (a build traces it in several stages)
    import io

    from rich.console import Console

    from hadmc_deploy.ui import UI

    buf = io.StringIO()
    ui = UI(err=Console(file=buf, width=400))
    for _ in range(3):
        trace(Odd(), (1, 3, 4, 4), ui=ui)
    assert buf.getvalue().count("warning:") == 1
    # F.layer_norm with get_attr weights (torchvision's LayerNorm2d): its weight and bias join the
    # channels they scale; prunable, not exactly (the statistics are over those channels)
    ln = nn.Sequential(nn.Conv2d(3, 8, 1), LayerNorm2d(8), nn.Conv2d(8, 2, 1))
    group = trace(ln, (1, 3, 4, 4)).group("0")
    assert group.prunable and not group.exact and "layer_norm" in group.reason
    assert {m["tensor"] for m in group.members} >= {"1.weight", "1.bias"}


def test_ignore_and_bad_ignore() -> None:
    g = trace(demo_cnn(), (1, 1, 28, 28), ignore=["layer1.0.conv1"])
    assert not g.group("layer1.0.conv1").prunable and "--ignore" in g.group("layer1.0.conv1").reason
    with pytest.raises(GraphError, match="names no module"):
        trace(demo_cnn(), (1, 1, 28, 28), ignore=["nope"])


def test_untraceable_model_is_a_graph_error() -> None:
    class Dyn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(x) if x.sum() > 0 else F.relu(self.c(x))

    with pytest.raises(GraphError, match="cannot be traced"):
        trace(Dyn(), (1, 3, 4, 4))


def test_fixed_size_reshape_and_channel_slices_lock() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(4, 2, 1)
            self.fc = nn.Linear(8 * 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            return self.fc(y.view(1, 128)) + self.b(y[:, :4]).mean((2, 3)).sum()

    g = trace(Fixed(), (1, 3, 4, 4))
    assert not g.group("a").prunable


def test_round_width() -> None:
    assert round_width(64, 30, 8) == 32
    assert round_width(64, 3, 8) == 8
    assert round_width(12, 5, 8) == 5  # too narrow for steps of 8: only the granularity applies
    assert round_width(48, 20, 8, granularity=3) == 24
    assert round_width(64, 64, 8) == 64
    assert round_width(10, 9.6, 4) == 10


def test_channels_last_linear_counts_samples_in_batch_and_its_rows_apart() -> None:
    """A ConvNeXt-style pointwise Linear on (N, H, W, C) multiplies N*H*W rows. Its spec's batch
    counts samples, as every op's does (a table prices a layer at another batch by replacing it),
    and the rows per sample ride along: before, batch held the rows, so a table re-priced at its
    own batch timed 196x too few rows and the search priced these layers with the roofline."""
    from dataclasses import replace

    from hadmc_deploy.layer_onnx import example_inputs, input_shapes, layer_model

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, 2, 1)
            self.pw = nn.Linear(8, 16)
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pw(self.stem(x).permute(0, 2, 3, 1))  # (N, 4, 4, 16)
            return self.head(y.mean((1, 2)))

    g = trace(Block(), (2, 1, 8, 8))
    pw = next(layer for layer in g.layers if layer.name == "pw").spec
    head = next(layer for layer in g.layers if layer.name == "head").spec
    assert (pw.batch, pw.rows_per_sample()) == (2, 16) and (head.batch, head.rows_per_sample()) == (2, 1)
    assert pw.macs() == 2 * 16 * 8 * 16
    at_32 = replace(pw, batch=32)
    assert at_32.macs() == 32 * 16 * 8 * 16 and "rows_per_sample=16" in at_32.key()
    import onnxruntime as ort

    for precision in ("fp32", "int8"):
        model = layer_model(replace(at_32, precision=precision), "qdq_u8s8")
        assert input_shapes(at_32) == [(32, 16, 8)]
        out = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, example_inputs(model))[0]
        assert out.shape == (32, 16, 16)


def test_hand_written_channels_first_layer_norm_leaves_its_channels_prunable_inexactly() -> None:
    """ConvNeXt's reference LayerNorm (data_format="channels_first") is written out: a mean over
    the channels with keepdim, (x - u).pow(2), torch.sqrt. Those channels were locked ("reduction
    over the channel axis", "pow not understood"), which froze the whole residual stream; they
    are prunable now, inexactly, as through nn.LayerNorm. A mean over the channels that drops the
    axis still locks them (the channels feed a reduced tensor)."""

    class LN2d(nn.Module):
        def __init__(self, c: int, use_var: bool) -> None:
            super().__init__()
            self.weight, self.bias, self.use_var = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), use_var

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = x.mean(1, True)  # keepdim given by position
            s = x.var(1, keepdim=True, unbiased=False) if self.use_var else (x - u).pow(2).mean(1, keepdim=True)
            return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]

    class Net(nn.Module):
        def __init__(self, use_var: bool) -> None:
            super().__init__()
            self.stem, self.norm, self.body, self.head = nn.Conv2d(3, 16, 3, padding=1), LN2d(16, use_var), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.norm(self.stem(x))
            return self.head((x + self.body(x)).mean((2, 3)))

    for use_var in (False, True):
        g = trace(Net(use_var), (2, 3, 8, 8))
        stem = g.group("stem")
        assert stem.prunable and not stem.exact and "over these channels" in stem.reason
        assert not [w for w in g.warnings if "not understood" in w or "channel axis" in w]
        torch.manual_seed(0)
        model = Net(use_var).eval()
        pruned, _ = apply(model, trace(model, (2, 3, 8, 8)), WidthPlan(keep={"stem": 8}))
        assert pruned.norm.weight.shape == (8,) and pruned.body.weight.shape == (8, 8, 3, 3)  # the residual add ties body to the stream
        assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)

    class ChannelMean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x).mean(1).flatten(1))  # (N, H*W): the channels are summed away

    assert not trace(ChannelMean(), (2, 3, 8, 8)).group("stem").prunable


def test_cbam_channel_mean_and_max_leave_the_channels_prunable_inexactly() -> None:
    """CBAM's spatial attention reads the channel mean and the channel max (`x.max(1, keepdim=True)[0]`,
    or `torch.max(x, 1)[0].unsqueeze(1)` as its reference code writes it) while x itself flows on
    (`x * attention`). Tensor.max was "not understood" and locked the attended channels; now the
    channels stay prunable, inexactly, surgery narrows them and the model runs. torch.max(a, b)
    stays elementwise (ties a and b), and a channel max that is all the channels reach still locks."""

    class Net(nn.Module):
        def __init__(self, form: str) -> None:
            super().__init__()
            self.form = form
            self.stem, self.spatial, self.body, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(2, 1, 7, padding=3), nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            if self.form == "keepdim":
                s = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
            elif self.form == "values":
                s = torch.cat([torch.mean(x, 1).unsqueeze(1), x.amin(1, keepdim=True) + x.min(dim=1).values.unsqueeze(1)], 1)
            else:
                s = torch.cat([torch.mean(x, 1).unsqueeze(1), torch.max(x, 1)[0].unsqueeze(1)], 1)
            x = x * torch.sigmoid(self.spatial(s))
            return self.head(self.body(x).amax((2, 3)))

    for form in ("keepdim", "values", "reference"):
        g = trace(Net(form), (2, 3, 8, 8))
        stem = g.group("stem")
        assert stem.prunable and not stem.exact and "over these channels" in stem.reason, form
        assert g.group("body").prunable and g.group("body").exact, form  # amax over space: a global max pool
        assert not [w for w in g.warnings if "not understood" in w or "channel axis" in w], (form, g.warnings)
        torch.manual_seed(0)
        model = Net(form).eval()
        pruned, _ = apply(model, trace(model, (2, 3, 8, 8)), WidthPlan(keep={"stem": 8, "body": 4}))
        assert pruned.stem.weight.shape[0] == 8 and pruned.body.weight.shape == (4, 8, 3, 3) and pruned.spatial.weight.shape == (1, 2, 7, 7)
        assert pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)

    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.max(self.a(x), self.b(x)).mean((2, 3)))

    g = trace(Pair(), (2, 3, 8, 8))
    tied = g.group("a")
    assert tied.prunable and tied.exact and {"a.weight", "b.weight"} <= {m["tensor"] for m in tied.members}  # one group: a and b tied

    class OnlyMax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x).max(1)[0].flatten(1))  # (N, H*W): a channel max is all that is left

    assert not trace(OnlyMax(), (2, 3, 8, 8)).group("stem").prunable


def test_l2_normalisations_over_the_channels_leave_them_prunable_inexactly() -> None:
    """SSD's L2Norm (`x / x.pow(2).sum(1, keepdim=True).sqrt()` times a per-channel weight),
    F.normalize, Tensor.norm and torch.linalg.vector_norm over the channels locked them ("not
    understood", or a sum "over the channel axis"); they are prunable now, inexactly, the L2Norm
    weight narrows with them, and a norm over space stays exact."""

    class L2Norm(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.full((c,), 20.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10
            return self.weight.unsqueeze(0).unsqueeze(2).unsqueeze(3).expand_as(x) * torch.div(x, norm)

    class Net(nn.Module):
        def __init__(self, form: str) -> None:
            super().__init__()
            self.form, self.stem, self.l2, self.body, self.head = form, nn.Conv2d(3, 16, 3, padding=1), L2Norm(16), nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = {"ssd": lambda: self.l2(x), "normalize": lambda: F.normalize(x, dim=1), "norm": lambda: x / x.norm(dim=1, keepdim=True),
                 "vector_norm": lambda: x / torch.linalg.vector_norm(x, 2, 1, True), "space": lambda: x / x.norm(2, (2, 3), True)}[self.form]()
            return self.head(self.body(x).mean((2, 3)))

    for form in ("ssd", "normalize", "norm", "vector_norm", "space"):
        model = Net(form).eval()
        g = trace(model, (2, 3, 8, 8))
        stem = g.group("stem")
        assert stem.prunable and not g.warnings, (form, g.warnings)
        assert stem.exact == (form == "space"), form
        pruned, _ = apply(model, g, WidthPlan(keep={"stem": 8}))
        assert pruned.body.weight.shape == (8, 8, 3, 3) and pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)
        if form == "ssd":
            assert pruned.l2.weight.shape == (8,)


def test_auxiliary_head_run_only_in_training_is_narrowed_with_the_channels_it_reads() -> None:
    """A GoogLeNet-style auxiliary classifier behind `if self.training` (here read in a helper, as
    torchvision's GoogLeNet does): the eval graph never saw it, surgery left its Linear at full
    width, and recovery, which trains the pruned model, failed with "mat1 and mat2 shapes cannot be
    multiplied". The graph now follows the training forward too: the auxiliary Linear narrows with
    the channels it reads, its costs stay out of the graph, and tracing leaves the model's
    BatchNorm statistics as they were."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
            self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4, 5))
            self.fc = nn.Linear(24, 5)

        def _outputs(self, main: torch.Tensor, aux: torch.Tensor | None) -> Any:
            return (main, aux) if self.training and aux is not None else main

        def forward(self, x: torch.Tensor) -> Any:
            x = self.a(x)
            aux = self.aux(x) if self.training else None
            return self._outputs(self.fc(self.b(x).mean((2, 3))), aux)

    torch.manual_seed(0)
    model = Net().eval()
    before = model.a[1].running_mean.clone()
    g = trace(model, (1, 3, 8, 8))
    assert torch.equal(model.a[1].running_mean, before) and not model.training
    assert g.group("a.0").prunable and "aux.2.weight" in {m["tensor"] for m in g.group("a.0").members}
    assert not [layer for layer in g.layers if layer.name.startswith("aux")]  # the deployed model runs in eval mode
    pruned, _ = apply(model, g, WidthPlan(keep={"a.0": 8}))
    assert pruned.aux[2].in_features == 8 * 4
    main, aux = pruned.train()(torch.randn(4, 3, 8, 8))
    assert main.shape == aux.shape == (4, 5)


def test_non_local_block_products_tie_the_contracted_channels_exactly() -> None:
    """A non-local block (theta/phi/g 1x1 convs, `torch.matmul` over positions, softmax, W back): the
    matmuls were "not understood" and locked theta, phi and g. Now the contracted channels tie theta
    to phi, g's channels pass through the product into W, zeroing equals removing (checked), and a
    contraction with a weight matrix, which surgery would not slice, still locks."""

    class NonLocal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.theta, self.phi, self.g, self.w = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            n, _, h, w = x.shape
            t, p = self.theta(x).flatten(2).transpose(1, 2), self.phi(x).flatten(2)
            a = torch.softmax(t @ p, dim=-1)
            y = torch.bmm(a, self.g(x).flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
            return self.head((x + self.w(y)).mean((2, 3)))

    g = trace(NonLocal().eval(), (2, 3, 8, 8))
    assert not g.warnings, g.warnings
    theta = g.group("theta")
    assert theta.prunable and theta.exact and {"theta.weight", "phi.weight"} <= {m["tensor"] for m in theta.members}
    assert g.group("g").prunable and g.group("g").exact and "w.weight" in {m["tensor"] for m in g.group("g").members}
    res = prune_equivalence(NonLocal().eval(), (2, 3, 8, 8), 0.5, seed=0, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4 and res.pruned_groups >= 2, res.max_abs_diff

    class WeightMatrix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.proj = nn.Conv2d(3, 16, 3, padding=1), nn.Parameter(torch.randn(16, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.stem(x).mean((2, 3)) @ self.proj

    assert not trace(WeightMatrix(), (2, 3, 8, 8)).group("stem").prunable


def test_selective_kernel_stack_and_tensor_split_keep_their_channels_prunable_exactly() -> None:
    """SKNet's selective kernel stacks its branches (`torch.stack(..., 1)`), sums over the branch axis
    and takes a softmax along it; `torch.tensor_split(x, 2, 1)` halves channels as chunk does. Stack
    and tensor_split were "not understood" and the softmax "over the channel axis": the branches and
    the attention Linear stayed whole. Now the branches tie channel by channel, the Linear's outputs
    pair up (c with C + c), zeroing equals removing (checked), and a pruned model runs."""

    class SK(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.b1, self.b2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=2, dilation=2)
            self.fc1, self.fc2, self.post, self.head = nn.Linear(16, 8), nn.Linear(8, 32), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            feats = torch.stack([torch.relu(self.b1(x)), torch.relu(self.b2(x))], dim=1)
            a = self.fc2(torch.relu(self.fc1(feats.sum(dim=1).mean((2, 3))))).view(x.size(0), 2, -1, 1, 1).softmax(dim=1)
            y = self.post((feats * a).sum(dim=1))
            p, q = torch.tensor_split(y, 2, dim=1)
            return self.head(torch.cat([q, p], 1).mean((2, 3)))

    torch.manual_seed(0)
    model = SK().eval()
    g = trace(model, (2, 3, 8, 8))
    assert not g.warnings, g.warnings
    branches = g.group("b1")
    assert branches.prunable and branches.exact and {"b2.weight", "fc2.weight"} <= {m["tensor"] for m in branches.members}
    assert g.group("post").prunable
    res = prune_equivalence(model, (2, 3, 8, 8), 0.5, seed=0, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4 and res.pruned_groups >= 3, res.max_abs_diff
    pruned, _ = apply(model, g, WidthPlan(keep={"b1": 8, "post": 8}))
    assert pruned.fc2.out_features == 16 and pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_spatial_transformer_and_local_response_norm_keep_their_channels_prunable() -> None:
    """A spatial transformer samples every channel at the same grid (`F.affine_grid`, `F.grid_sample`):
    grid_sample was "not understood" and locked the sampled channels; now they pass through exactly
    (zeroing equals removing, checked) while channels that reach the grid's coordinates lock.
    LocalResponseNorm (AlexNet, GoogLeNet v1) normalises by neighbouring channels: prunable, inexactly."""

    class STN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.loc, self.body, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 6), nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 4)
            self.lrn = nn.LocalResponseNorm(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            theta = self.loc(x.mean((2, 3))).view(-1, 2, 3)
            x = F.grid_sample(x, F.affine_grid(theta, list(x.size()), align_corners=False), align_corners=False)
            return self.head(self.lrn(torch.relu(self.body(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = STN().eval()
    g = trace(model, (2, 3, 8, 8))
    assert not [w for w in g.warnings if "not understood" in w], g.warnings
    assert g.group("stem").prunable and g.group("stem").exact
    assert g.group("body").prunable and not g.group("body").exact and "neighbours" in g.group("body").reason
    assert not g.group("loc").prunable  # its six outputs are the transform
    res = prune_equivalence(model, (2, 3, 8, 8), 0.5, seed=0, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4 and res.pruned_groups >= 1, res.max_abs_diff
    pruned, _ = apply(model, g, WidthPlan(keep={"stem": 8, "body": 4}))
    assert pruned.loc.in_features == 8 and pruned(torch.randn(2, 3, 8, 8)).shape == (2, 4)

    class FlowWarp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.flow, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 2, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            grid = torch.tanh(self.flow(x)).permute(0, 2, 3, 1)
            return self.head(F.grid_sample(x, grid, align_corners=False).mean((2, 3)))

    g = trace(FlowWarp(), (2, 3, 8, 8))
    assert not g.group("flow").prunable and "sampling coordinates" in g.group("flow").reason
    assert g.group("stem").prunable
