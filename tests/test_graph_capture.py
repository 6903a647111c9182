"""Graph capture of everyday Python: chunk/split unpacking, list building, len, shape-only branches,
*args, dict/tuple outputs, channels-last flatten; data-dependent control flow names its line."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hadmc_deploy.errors import GraphError
from hadmc_deploy.export import export_onnx
from hadmc_deploy.graph.check import output_tensors, prune_equivalence
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.models.everyday import C2f, c2f_net, onet

torch.set_num_threads(1)


def _ort_matches(model: nn.Module, shape: tuple[int, ...], path) -> int:  # noqa: ANN001
    """Export with the product's exporter; every output agrees with torch. Returns the number of outputs."""
    result = export_onnx(model, shape, path, dynamic_batch=True, exporters=("legacy",))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in output_tensors(model(x))]
    assert len(got) == len(want) == len(result.output_names)
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, want, strict=True)) < 1e-4
    return len(got)


def test_c2f_traces_prunes_and_exports(tmp_path) -> None:  # noqa: ANN001
    """Ultralytics' C2f: `list(x.chunk(2, 1))`, a loop appending to it, `*inputs`, a dict of outputs."""
    shape = (1, 3, 64, 64)
    g = trace(c2f_net(), shape)
    cv1 = g.group("stage2.1.cv1.conv")
    # the chunk halves must shrink alike (cells), and the bottleneck reads the second half only
    assert cv1.prunable and cv1.cell_mode == "balanced" and cv1.granularity == 2
    assert g.group("stage1.1.cv2.conv").prunable is False  # p3 is returned: output layout kept
    for ratio in (0.3, 0.5):
        res = prune_equivalence(c2f_net(), shape, ratio, seed=int(ratio * 10), graph=g)
        assert res.pruned_groups >= 6 and res.zeroing_effect > 1e-3 and res.max_abs_diff < 1e-5
    out = res.pruned(torch.randn(*shape))
    assert set(out) == {"p3", "p4", "logits"} and out["p3"].shape[1] == 64 and out["logits"].shape == (1, 10)
    assert _ort_matches(res.pruned, shape, tmp_path / "c2f.onnx") == 3


def test_onet_channels_last_flatten_prunes_conv4(tmp_path) -> None:  # noqa: ANN001
    """permute(0, 3, 2, 1).contiguous().view(n, -1) -> Linear: channel c owns columns c, c+128, ..."""
    shape = (2, 3, 48, 48)
    g = trace(onet(), shape)
    conv4 = g.group("conv4")
    assert conv4.prunable, conv4.reason
    dense5_in = next(m for m in conv4.members if m["tensor"] == "dense5.weight")
    assert "every 128" in dense5_in["mapping"] and "channels-last" in dense5_in["mapping"]
    for ratio in (0.3, 0.5):
        res = prune_equivalence(onet(), shape, ratio, seed=int(ratio * 10), graph=g)
        assert "conv4" in res.plan.indices and res.zeroing_effect > 1e-3 and res.max_abs_diff < 1e-5
    assert res.pruned.dense5.in_features == 9 * res.pruned.conv4.out_channels
    assert _ort_matches(res.pruned, shape, tmp_path / "onet.onnx") == 3


class _Flatten(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        if self.how == "transpose_reshape":
            y = y.transpose(1, 3).reshape(y.size(0), -1)
        elif self.how == "permute_flatten":
            y = torch.flatten(y.permute(0, 2, 3, 1), 1)
        else:
            y = y.permute(0, 3, 1, 2).contiguous().view(len(y), -1)  # N, W, C, H
        return self.fc(y)


@pytest.mark.parametrize("how", ["transpose_reshape", "permute_flatten", "width_first_view"])
def test_permuted_flatten_variants_are_exact(how: str) -> None:
    shape = (2, 3, 4, 5)
    g = trace(_Flatten(how), shape)
    assert g.group("conv").prunable
    res = prune_equivalence(_Flatten(how), shape, 0.5, seed=3, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-3 and res.pruned.fc.in_features == 4 * 20


class _Everyday(nn.Module):
    """split with equal sizes read from the shape, unbind, len(), a shape-only branch, tuple from a submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.pair = C2f(8, 8, n=1)
        self.heads = nn.ModuleList(nn.Conv2d(4, 2, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.pair(self.a(x))
        if y.shape[1] % 2 == 0 and len(y.shape) == 4:
            halves = y.split(y.shape[1] // 2, 1)
        else:
            halves = (y, y)
        outs = [head(h) for head, h in zip(self.heads, halves, strict=True)]
        first, *rest = torch.stack(outs, 0).unbind(0)
        return (first, *rest)


def test_everyday_python_traces() -> None:
    g = trace(_Everyday(), (1, 3, 8, 8))
    assert g.group("a").prunable
    # split at y.shape[1] // 2: the code recomputes the point after pruning, so the halves shrink alike
    split = g.group("pair.cv2.conv")
    assert split.prunable and split.cell_mode == "balanced" and split.cells == [0, 0, 0, 0, 1, 1, 1, 1]
    res = prune_equivalence(_Everyday(), (1, 3, 8, 8), 0.5, seed=2, graph=g)
    assert res.max_abs_diff < 1e-5 and res.zeroing_effect > 1e-4


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        if y.mean() > 0:  # the line the error must name
            return y
        return -y


def test_data_dependent_branch_names_construct_and_line() -> None:
    with pytest.raises(GraphError) as info:
        trace(_DataDependent(), (1, 3, 4, 4))
    text = info.value.one_line()
    assert "cannot be traced" in text and "branch" in text and "tensor data" in text
    assert "test_graph_capture.py" in text and "if y.mean() > 0:" in text
    assert info.value.exit_code == 9
