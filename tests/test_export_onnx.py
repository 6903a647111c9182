"""export_onnx: real exports (dynamo and the legacy fallback), simplification, BN folding, verification."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_models import DataDependentBranch, TinyConvBN, conv_bn_onnx

from hadmc_deploy import export as export_mod
from hadmc_deploy import onnx_passes
from hadmc_deploy.data import FASHION_MNIST_DIR, Preprocess, load_data
from hadmc_deploy.errors import DataError, ExportError, UsageError, VerificationError
from hadmc_deploy.export import EXPORT_RECORD_KEY, export_onnx, verify_file
from hadmc_deploy.models.demo import demo_cnn
from hadmc_deploy.models.resnet import resnet18


def torch_out(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).numpy()


def ort_out(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    torch.manual_seed(0)
    model = demo_cnn()
    model.train()  # export must switch to eval (and restore the mode afterwards)
    out = tmp_path_factory.mktemp("demo") / "demo.onnx"
    result = export_onnx(model, (1, 1, 28, 28), out)
    return model, out, result


def test_demo_model_exports_with_dynamo_and_verifies(demo_export):
    model, out, result = demo_export
    assert result.exporter == "dynamo" and result.exporter_fallback_reason is None
    assert result.simplifier in ("onnxslim", "onnxsim")
    v = result.verification
    assert v.passed and v.inputs == "random" and v.samples == 3
    assert 0 <= result.max_abs_err < 1e-4
    assert model.training, "the caller's training mode must be restored"
    assert result.input_name == "input" and result.output_names == ["output"]


def test_export_is_one_file_with_stable_names_and_no_bn(demo_export):
    torch_model, out, result = demo_export
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo.onnx"]  # no .data, no temp files
    model = onnx.load(str(out), load_external_data=False)
    assert not onnx_passes.uses_external_data(model)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    ops = onnx_passes.op_counts(model)
    assert ops["Conv"] == sum(isinstance(m, torch.nn.Conv2d) for m in torch_model.modules())
    assert "BatchNormalization" not in ops
    assert result.sha256 and result.size_bytes == out.stat().st_size
    record = json.loads(next(p.value for p in model.metadata_props if p.key == EXPORT_RECORD_KEY))
    assert record["exporter"] == "dynamo" and record["verification"]["max_abs_err"] == result.max_abs_err


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_runs_at_other_batch_sizes(demo_export, batch):
    model, out, _ = demo_export
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    was = model.training
    np.testing.assert_allclose(ort_out(out, x), torch_out(model, x), rtol=1e-3, atol=1e-4)
    model.train(was)


def test_resnet18_small_input_on_real_data(tmp_path):
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    source = "builtin:fashion-mnist:test" if FASHION_MNIST_DIR.is_dir() else "builtin:digits:test"
    data = load_data(source, Preprocess(resize=(64, 64), channels=3), limit=6)
    result = export_onnx(model, (1, 3, 64, 64), tmp_path / "r18.onnx", verify_inputs=data.x)
    assert result.verification.inputs == "real" and result.verification.samples == 6
    assert result.exporter == "dynamo"
    assert result.ops["Conv"] == 20 and "BatchNormalization" not in result.ops
    np.testing.assert_allclose(ort_out(tmp_path / "r18.onnx", data.x[:2]), torch_out(model, data.x[:2]), rtol=1e-3, atol=1e-4)


def test_dynamo_failure_falls_back_to_legacy_with_reason(tmp_path):
    torch.manual_seed(0)
    model = DataDependentBranch()
    result = export_onnx(model, (1, 1, 8, 8), tmp_path / "dd.onnx")
    assert result.exporter == "legacy"
    assert result.exporter_fallback_reason.startswith("dynamo exporter failed")
    assert result.verification.passed
    assert any("legacy exporter" in w for w in result.warnings), "the tracer's warning about the branch is recorded"


def test_fallback_path_when_dynamo_raises(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::weird")

    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", broken)
    result = export_onnx(TinyConvBN(), (1, 1, 12, 12), tmp_path / "t.onnx")
    assert result.exporter == "legacy"
    assert "aten::weird" in result.exporter_fallback_reason
    assert "BatchNormalization" not in result.ops


def test_both_exporters_failing_is_an_export_error_and_writes_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("nope")

    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", broken)
    monkeypatch.setitem(export_mod.EXPORTERS, "legacy", broken)
    with pytest.raises(ExportError, match="cannot be exported"):
        export_onnx(TinyConvBN(), (1, 1, 12, 12), tmp_path / "t.onnx")
    assert list(tmp_path.iterdir()) == []


def _tamper_first_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    return model


def test_tampered_graph_fails_verification_and_writes_nothing(tmp_path, monkeypatch):
    real_check = export_mod.check_and_infer
    monkeypatch.setattr(export_mod, "check_and_infer", lambda m: _tamper_first_conv(real_check(m)))
    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", export_mod._export_legacy)  # fast; the check is what is tested
    with pytest.raises(VerificationError) as info:
        export_onnx(TinyConvBN(), (1, 1, 12, 12), tmp_path / "t.onnx")
    message = info.value.one_line()
    assert "worst element output[0]" in message and "abs err" in message and "vs torch" in message
    assert list(tmp_path.iterdir()) == []


def test_verify_file_catches_an_edited_initializer(tmp_path, monkeypatch):
    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", export_mod._export_legacy)
    model = TinyConvBN()
    path = tmp_path / "t.onnx"
    export_onnx(model, (1, 1, 12, 12), path)
    assert verify_file(model, path).passed
    onnx.save(_tamper_first_conv(onnx.load(str(path))), str(path))
    with pytest.raises(VerificationError, match="disagrees"):
        verify_file(model, path)


def test_static_batch_export(tmp_path, monkeypatch):
    monkeypatch.setitem(export_mod.EXPORTERS, "dynamo", export_mod._export_legacy)
    x = np.random.default_rng(1).standard_normal((5, 1, 12, 12)).astype(np.float32)
    result = export_onnx(TinyConvBN(), (2, 1, 12, 12), tmp_path / "s.onnx", dynamic_batch=False, verify_inputs=x)
    assert result.input_shape == [2, 1, 12, 12] and result.verification.samples == 5


def test_fold_conv_bn_pass_matches_onnxruntime():
    model = conv_bn_onnx()
    assert len(onnx_passes.conv_bn_pairs(model)) == 1
    folded, count = onnx_passes.fold_conv_bn(model)
    assert count == 1 and onnx_passes.conv_bn_pairs(folded) == []
    assert "BatchNormalization" not in onnx_passes.op_counts(folded)
    onnx.checker.check_model(folded, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(folded), run(model), rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_user_errors(tmp_path):
    model = TinyConvBN()
    with pytest.raises(DataError, match="verification inputs have shape"):
        export_onnx(model, (1, 1, 12, 12), tmp_path / "t.onnx", verify_inputs=np.zeros((2, 3, 12, 12), np.float32))
    with pytest.raises(UsageError, match="opset"):
        export_onnx(model, (1, 1, 12, 12), tmp_path / "t.onnx", opset=99)
    assert list(tmp_path.iterdir()) == []


def test_pruned_model_exports_and_verifies(tmp_path):
    """A physically narrower model from the graph's surgery exports like any other."""
    from hadmc_deploy import surgery
    from hadmc_deploy.graph import trace
    from hadmc_deploy.graph.types import WidthPlan

    torch.manual_seed(0)
    model = demo_cnn().eval()
    graph = trace.trace(model, (1, 1, 28, 28))
    plan = WidthPlan(keep={g.id: max(1, g.width // 2) for g in graph.groups if g.prunable})
    pruned, _ = surgery.apply(model, graph, plan)
    result = export_onnx(pruned, (1, 1, 28, 28), tmp_path / "pruned.onnx")
    assert result.verification.passed
    first_conv = next(m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.out_channels < 32  # it really is narrower
    x = np.random.default_rng(5).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(ort_out(tmp_path / "pruned.onnx", x), torch_out(pruned, x), rtol=1e-3, atol=1e-4)


class _LargeLogits(torch.nn.Module):
    """Logits in the hundreds (as from random-BN ResNet-50s), one column exactly zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.fc.weight.normal_(0, 100.0)
            self.fc.weight[3] = 0.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _shift_zero_column(model_proto: onnx.ModelProto, by: float) -> onnx.ModelProto:
    from onnx import numpy_helper

    for init in model_proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.shape == (4, 16) or w.shape == (16, 4):
            w = w.copy()
            if w.shape == (4, 16):
                w[3] += by
            else:
                w[:, 3] += by
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return model_proto


def test_verification_tolerance_scales_with_the_output(tmp_path):
    """An error of ~1e-3 on an element near zero is float32 noise beside logits of ~4e2
    (passes), but an error of ~1 is not (fails): the absolute tolerance follows the output's scale."""
    model = _LargeLogits().eval()
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    path = tmp_path / "big.onnx"
    torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(path), input_names=["input"], output_names=["output"], dynamo=False,
                      dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    assert verify_file(model, path, x).passed
    onnx.save(_shift_zero_column(onnx.load(str(path)), 3e-4), str(path))
    result = verify_file(model, path, x)
    assert result.passed and result.max_abs_err > 1e-4  # over the old fixed atol, within the output's scale
    onnx.save(_shift_zero_column(onnx.load(str(path)), 0.3), str(path))
    with pytest.raises(VerificationError, match="disagrees"):
        verify_file(model, path, x)


def test_an_earlier_export_is_verified_again_on_real_inputs_before_it_ships(tmp_path):
    """The build exports the original early (random inputs) and ships that file after checking it on
    real images; a model that no longer computes what the file does fails and nothing is written."""
    from hadmc_deploy.export import reverified

    torch.manual_seed(0)
    model = demo_cnn().eval()
    early = export_onnx(model, (1, 1, 28, 28), tmp_path / "early.onnx")
    assert early.verification.inputs == "random"
    real = np.random.default_rng(1).uniform(-1, 1, (5, 1, 28, 28)).astype(np.float32)
    shipped = reverified(early, model, tmp_path / "baseline.onnx", real)
    assert shipped.verification.inputs == "real" and shipped.verification.samples == 5 and shipped.verification.passed
    assert shipped.path == str(tmp_path / "baseline.onnx") and shipped.sha256 != "" and shipped.exporter == early.exporter
    record = json.loads(next(p.value for p in onnx.load(shipped.path).metadata_props if p.key == EXPORT_RECORD_KEY))
    assert record["verification"]["inputs"] == "real" and record["dynamic_batch"] is True
    np.testing.assert_allclose(ort_out(shipped.path, real), torch_out(model, real), rtol=1e-3, atol=1e-4)

    with torch.no_grad():
        next(model.parameters()).add_(0.5)  # the model changed after the early export
    with pytest.raises(VerificationError):
        reverified(early, model, tmp_path / "stale.onnx", real)
    assert not (tmp_path / "stale.onnx").exists()


class _PreActBlock(torch.nn.Module):
    """A pre-activation residual block: its second conv has no bias and feeds the Add directly; 23
    channels are off the blocked (NCHWc) width of AVX2 and AVX-512, where ONNX Runtime fuses either way."""

    def __init__(self, channels: int = 23) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return torch.relu(self.conv(torch.relu(self.bn(y))) + y)


def _ort_ops(path, tmp_path) -> list[str]:  # noqa: ANN001
    """The op types of the graph ONNX Runtime runs after its optimizations."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_a_bias_less_conv_feeding_an_add_gets_a_zero_bias_and_onnxruntime_fuses_them(tmp_path):
    torch.manual_seed(0)
    model = _PreActBlock().eval()
    result = export_onnx(model, (1, 1, 12, 12), tmp_path / "block.onnx")
    assert result.conv_biases_added == 1 and result.verification.passed
    exported = onnx.load(str(tmp_path / "block.onnx"))
    assert all(len(n.input) == 3 for n in exported.graph.node if n.op_type == "Conv")
    assert "Add" not in _ort_ops(tmp_path / "block.onnx", tmp_path)  # fused into the conv
    # the same graph without the bias: ONNX Runtime leaves the Add (what the pass is for)
    without = onnx.ModelProto()
    without.CopyFrom(exported)
    conv = next(n for n in without.graph.node if n.op_type == "Conv" and n.input[2].endswith("_zero_bias"))
    del conv.input[2]
    onnx.save(without, str(tmp_path / "without.onnx"))
    assert "Add" in _ort_ops(tmp_path / "without.onnx", tmp_path)
    again, count = onnx_passes.bias_for_add_fusion(exported)
    assert count == 0 and len(again.graph.initializer) == len(exported.graph.initializer)  # idempotent
