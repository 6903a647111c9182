"""Model loading rules: state_dict + --arch, checkpoints, trusted pickles, and the error for each bad input."""

from __future__ import annotations

import pathlib
import textwrap

import pytest
import torch
from torch import nn

from hadmc_deploy.errors import (
    ArchSpecError,
    ModelFileCorruptError,
    ModelFileNotFoundError,
    StateDictMismatchError,
    UntrustedPickleError,
)
from hadmc_deploy.loading import extract_state_dict, load_model, parse_arch_kwargs

ARCH = "hadmc_deploy.models.demo:demo_cnn"


class MarkerPayload:
    """Unpickling this object calls Path.touch(marker): a stand-in for malicious code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _demo_state_dict() -> dict[str, torch.Tensor]:
    from hadmc_deploy.models.demo import demo_cnn

    torch.manual_seed(0)
    return demo_cnn().state_dict()


def test_state_dict_with_arch_loads_and_matches(tmp_path):
    sd = _demo_state_dict()
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    loaded = load_model(path, ARCH)
    assert loaded.kind == "state_dict"
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, sd[key])


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "ema"])
def test_training_checkpoint_keys(tmp_path, key):
    sd = _demo_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({key: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(path, ARCH)
    assert torch.equal(loaded.model.conv1.weight, sd["conv1.weight"])


def test_ddp_prefix_is_stripped():
    sd = {"module.a": torch.zeros(1)}
    assert list(extract_state_dict(sd)) == ["a"]


def test_checkpoint_recording_its_arch_needs_no_flag(tmp_path):
    path = tmp_path / "own.pth"
    torch.save({"arch": ARCH, "arch_kwargs": {"num_classes": 10}, "state_dict": _demo_state_dict(), "input_shape": [1, 1, 28, 28]}, path)
    loaded = load_model(path)
    assert loaded.arch == ARCH and loaded.info["input_shape"] == [1, 1, 28, 28]


def test_malicious_pickle_never_runs_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": MarkerPayload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(UntrustedPickleError) as info:
        load_model(path, ARCH)
    assert not marker.exists(), "unpickling ran code without --trust-model"
    msg = info.value.one_line()
    assert "--trust-model" in msg and "--arch" in msg and "\n" not in msg


def test_malicious_pickle_runs_only_with_trust(tmp_path):
    """The other side of the rule: --trust-model really unpickles (and so runs the payload)."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save(MarkerPayload(marker), path)
    with pytest.raises(ModelFileCorruptError):
        load_model(path, ARCH, trust_model=True)  # the payload returns None: not a model
    assert marker.exists()


def test_full_module_pickle_needs_trust(tmp_path):
    from hadmc_deploy.models.demo import demo_cnn

    path = tmp_path / "full.pth"
    torch.save(demo_cnn(), path)
    with pytest.raises(UntrustedPickleError):
        load_model(path)
    loaded = load_model(path, trust_model=True)
    assert loaded.kind == "pickle" and isinstance(loaded.model, nn.Module)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.pth", ARCH)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_demo_state_dict(), good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileCorruptError, match="truncated or corrupt"):
        load_model(bad, ARCH)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ModelFileCorruptError):
        load_model(bad, ARCH)


def test_state_dict_without_arch(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(_demo_state_dict(), path)
    with pytest.raises(ArchSpecError, match="--arch"):
        load_model(path)


@pytest.mark.parametrize("prefix", ["model.", "student.backbone."])
def test_a_wrapper_prefix_on_every_key_is_removed_when_that_matches_exactly(tmp_path, prefix):
    """Lightning modules and distillation wrappers save their model under an attribute name."""
    sd = _demo_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {prefix + k: v for k, v in sd.items()}, "epoch": 1}, path)
    loaded = load_model(path, ARCH)
    assert torch.equal(loaded.model.conv1.weight, sd["conv1.weight"]) and loaded.info["stripped_key_prefix"] == prefix
    # a prefix on only some keys, or one whose removal does not match, is still a mismatch
    partial = {("model." + k if i % 2 else k): v for i, (k, v) in enumerate(sd.items())}
    torch.save(partial, path)
    with pytest.raises(StateDictMismatchError):
        load_model(path, ARCH)


def test_a_model_needing_two_inputs_is_refused_with_the_fix(tmp_path):
    spec = tmp_path / "two.py"
    spec.write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)

            def forward(self, x, meta, scale=1.0):
                return self.conv(x).mean((2, 3)) * scale + meta

        def two():
            return Two()
    """))
    with pytest.raises(ArchSpecError, match=r"forward\(x, meta\) needs 2 inputs") as info:
        load_model(None, f"{spec}:two")
    assert "supplies meta" in info.value.one_line()


def test_mismatch_lists_first_keys(tmp_path):
    sd = _demo_state_dict()
    sd.pop("conv1.weight")
    sd["extra.weight"] = torch.zeros(2)
    sd["fc.weight"] = torch.zeros(5, 128)
    path = tmp_path / "m.pth"
    torch.save(sd, path)
    with pytest.raises(StateDictMismatchError) as info:
        load_model(path, ARCH)
    msg = info.value.one_line()
    assert "conv1.weight" in msg and "extra.weight" in msg and "fc.weight (5, 128) vs (10, 128)" in msg


def _project(tmp_path, monkeypatch, name: str) -> pathlib.Path:
    """A user's project folder holding NAME.py (a small CNN class), the working directory, and an
    import path as the console script has it: neither the folder nor '' on it."""
    import sys

    project = tmp_path / "project"
    project.mkdir()
    (project / f"{name}.py").write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Sequential):
            def __init__(self):
                super().__init__(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    """))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(project), ".")])
    return project


def test_a_module_in_the_working_directory_serves_arch_and_trusted_pickles(tmp_path, monkeypatch):
    """`--arch usernet:Net` and a whole model pickled from usernet.py load from the folder that holds
    it, as `python` would find them: the console script's import path lacks the working directory,
    and the pickle was called "truncated or corrupt". From elsewhere, the errors say what is missing."""
    import importlib
    import sys

    from hadmc_deploy.errors import ArchSpecError, ModelFileCorruptError

    project = _project(tmp_path, monkeypatch, "usernet_cwd")
    assert load_model(None, "usernet_cwd:Net").kind == "arch"
    assert str(project) not in sys.path  # the working directory is on the import path only while loading
    sys.path.append(str(project))
    torch.save(importlib.import_module("usernet_cwd").Net().half(), project / "whole.pt")
    sys.path.remove(str(project))
    for name in [n for n in sys.modules if n.startswith("usernet_cwd")]:
        del sys.modules[name]
    loaded = load_model(project / "whole.pt", trust_model=True)
    assert loaded.kind == "pickle" and loaded.info["converted_to_float32_from"] == ["float16"]
    assert loaded.model(torch.zeros(1, 3, 8, 8)).dtype == torch.float32  # a .half() model runs on the pipeline's inputs
    del sys.modules["usernet_cwd"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFileCorruptError, match="class cannot be found here .*usernet_cwd") as err:
        load_model(project / "whole.pt", trust_model=True)
    assert "truncated" not in str(err.value) and "PYTHONPATH" in err.value.hint
    with pytest.raises(ArchSpecError) as err:
        load_model(None, "usernet_cwd:Net")
    assert "usernet_cwd.py:Net" in err.value.hint


def test_arch_from_file_with_kwargs(tmp_path):
    file = tmp_path / "mymodels.py"
    file.write_text(textwrap.dedent("""
        from torch import nn
        def tiny(num_classes=2):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
    """))
    loaded = load_model(None, f"{file}:tiny", {"num_classes": 7})
    assert loaded.kind == "arch"
    assert loaded.model(torch.zeros(1, 3, 8, 8)).shape == (1, 7)


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("nocolon", "module:callable"),
        ("no_such_module_xyz:fn", "cannot import module"),
        ("hadmc_deploy.models.demo:nope", "has no 'nope'"),
        ("/tmp/definitely/missing.py:fn", "does not exist"),
        ("hadmc_deploy.models.demo:DEMO_ARCH", "failed"),
    ],
)
def test_bad_arch_specs(spec, pattern):
    with pytest.raises(ArchSpecError, match=pattern):
        load_model(None, spec)


def test_bad_arch_kwargs():
    with pytest.raises(ArchSpecError, match="JSON"):
        parse_arch_kwargs("{num_classes: 10}")
    with pytest.raises(ArchSpecError, match="object"):
        parse_arch_kwargs("[1, 2]")


def test_arch_spec_kwargs_and_torchvision_hint(monkeypatch) -> None:  # noqa: ANN001
    import importlib.util

    from hadmc_deploy.errors import ArchSpecError
    from hadmc_deploy.loading import build_arch, split_arch_spec

    assert split_arch_spec("torchvision:googlenet?aux_logits=false&num_classes=7&name=x") == (
        "torchvision:googlenet", {"aux_logits": False, "num_classes": 7, "name": "x"})
    model = build_arch("hadmc_deploy.models.demo:demo_cnn?num_classes=3")
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    with pytest.raises(ArchSpecError, match="not key=value"):
        split_arch_spec("torchvision:resnet18?oops")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchvision" else real(name, *a))
    with pytest.raises(ArchSpecError) as info:
        build_arch("torchvision:resnet50")
    assert "pip install torchvision==0.28.0 --no-deps" in info.value.one_line() and len(info.value.one_line().splitlines()) == 1


def test_torchvision_arch_builds_where_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    from hadmc_deploy.loading import build_arch

    model = build_arch("torchvision:googlenet?aux_logits=false&init_weights=true", {"num_classes": 5})
    assert model.aux1 is None and model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_a_safetensors_state_dict_loads_like_a_torch_one(tmp_path):
    """Weights saved with safetensors (the Hugging Face and timm default) need no pickle at all."""
    from safetensors.torch import save_file

    sd = _demo_state_dict()
    save_file(sd, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors", ARCH)
    assert loaded.kind == "state_dict"
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in sd.items())
    with pytest.raises(ArchSpecError, match="architecture is needed"):
        load_model(tmp_path / "m.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((tmp_path / "m.safetensors").read_bytes()[:200])
    with pytest.raises(ModelFileCorruptError, match="corrupt safetensors file"):
        load_model(broken, ARCH)


def test_torchscript_and_onnx_files_are_named_not_called_corrupt(tmp_path):
    """torch.load called a TorchScript archive "truncated or corrupt" and an ONNX file "neither a
    torch zip archive nor a pickle": neither keeps the nn.Module code pruning needs, and the error
    says what the file is and what to pass instead, with or without --trust-model."""
    from hadmc_deploy.models.demo import demo_cnn

    model = demo_cnn().eval()
    x = torch.randn(1, 1, 28, 28)
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "m.pt")
    for trust in (False, True):
        with pytest.raises(ModelFileCorruptError, match=r"TorchScript archive.*state_dict\(\)"):
            load_model(tmp_path / "m.pt", trust_model=trust)
    torch.onnx.export(model, x, tmp_path / "m.onnx", dynamo=False)
    with pytest.raises(ModelFileCorruptError, match=r"is an ONNX model.*hadmc-deploy bench"):
        load_model(tmp_path / "m.onnx", ARCH)
