"""`hadmc-deploy diff`: per-tensor hashes, changed layers, and the rebuild / recalibrate verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pipeline_models import TINY_ARCH, tiny_cnn

from hadmc_deploy.cli import main


def save(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"arch": TINY_ARCH, "state_dict": model.state_dict()}, path)
    return path


def diff(a: Path, b: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["diff", str(a), str(b), "--json", "-q"]) == 0
    return json.loads(capsys.readouterr().out)


def test_identical_weights_changed_and_shapes_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = tiny_cnn()
    a = save(model, tmp_path / "a.pth")
    assert diff(a, save(model, tmp_path / "same.pth"), capsys)["verdict"] == "identical"

    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] += 0.5  # the second conv only
    result = diff(a, save(model, tmp_path / "b.pth"), capsys)
    assert result["verdict"] == "recalibrate"
    assert result["changed_layers"] == ["3"]
    changed = [t for t in result["tensors"] if t["status"] == "changed"]
    assert [t["tensor"] for t in changed] == ["3.weight"] and changed[0]["max_abs_diff"] == pytest.approx(0.5)

    narrow = tiny_cnn(width=16)
    result = diff(a, save(narrow, tmp_path / "c.pth"), capsys)
    assert result["verdict"] == "rebuild"
    assert any(t["status"] == "shape changed" for t in result["tensors"])


def test_what_only_one_side_records_is_not_called_a_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain state_dict beside one that records its architecture: the same weights are identical
    ("arch differs" said only that one side did not record it); two recorded architectures that
    differ still rebuild."""
    torch.manual_seed(0)
    model = tiny_cnn()
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    assert diff(plain, save(model, tmp_path / "recorded.pth"), capsys)["verdict"] == "identical"
    torch.save({"arch": "other.py:net", "state_dict": model.state_dict()}, tmp_path / "other.pth")
    result = diff(tmp_path / "recorded.pth", tmp_path / "other.pth", capsys)
    assert result["verdict"] == "rebuild" and "arch differs" in result["reason"]


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["diff", str(tmp_path / "nope.pth"), str(tmp_path / "nope2.pth"), "-q"]) == 2
