"""The installed entry point: help texts, --json purity, one-line errors with distinct exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hadmc_deploy.cli import COMMANDS

EXE = str(Path(sys.executable).with_name("hadmc-deploy"))
ARCH = "hadmc_deploy.models.demo:demo_cnn"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_top_level_help():
    res = cli("--help")
    assert res.returncode == 0
    for name in COMMANDS:
        assert name in res.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help_with_examples(command):
    res = cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "--json" in res.stdout and "--arch" in res.stdout
    assert "example" in res.stdout.lower()


def test_inspect_json_is_the_only_stdout(tmp_path):
    res = cli("inspect", "--arch", ARCH, "--input-shape", "1,1,28,28", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["ok"] is True
    assert data["params"] == sum(p.numel() for p in __import__("hadmc_deploy.models.demo", fromlist=["x"]).demo_cnn().parameters())
    assert data["output_shape"] == [1, 10] and data["macs"] > 0


def test_targets_lists_builtins():
    res = cli("targets", "--json")
    data = json.loads(res.stdout)
    assert {"t4", "cpu", "cuda"} <= set(data["targets"])
    assert data["targets"]["t4"]["round_to"]["int8"] == 32
    assert data["targets"]["cpu"]["backend"] == "onnxruntime"


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_missing_model_file_exit_code():
    res = cli("inspect", "/nonexistent/model.pth", "--arch", ARCH)
    assert res.returncode == 3
    assert "does not exist" in _one_error_line(res)


def test_untrusted_pickle_one_line(tmp_path):
    from hadmc_deploy.models.demo import demo_cnn

    path = tmp_path / "full.pth"
    torch.save(demo_cnn(), path)
    res = cli("inspect", str(path), "--input-shape", "1,1,28,28")
    assert res.returncode == 5
    line = _one_error_line(res)
    assert "--trust-model" in line and "--arch" in line
    ok = cli("inspect", str(path), "--input-shape", "1,1,28,28", "--trust-model", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["kind"] == "pickle"


def test_bad_arch_and_shape_errors(tmp_path):
    res = cli("inspect", "--arch", "nosuchmodule_abc:net")
    assert res.returncode == 7 and "cannot import module" in _one_error_line(res)
    res = cli("inspect", "--arch", ARCH, "--input-shape", "1,3,x")
    assert res.returncode == 2 and "--input-shape" in _one_error_line(res)
    res = cli("inspect", "--arch", ARCH, "--input-shape", "1,3,28,28")
    assert res.returncode == 9 and "--input-shape" in _one_error_line(res)


def test_error_json_mode_prints_error_object():
    res = cli("inspect", "/nonexistent.pth", "--arch", ARCH, "--json")
    assert res.returncode == 3
    data = json.loads(res.stdout)
    assert data["ok"] is False and data["exit_code"] == 3


def test_debug_shows_traceback():
    res = cli("inspect", "/nonexistent.pth", "--arch", ARCH, "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_unknown_target_is_one_line(tmp_path):
    res = cli("build", "--arch", ARCH, "--input-shape", "1,1,28,28", "--target", "tx9", "--precision", "fp32", "--out", str(tmp_path / "b"))
    assert res.returncode == 2
    assert "unknown target 'tx9'" in _one_error_line(res)
    assert not (tmp_path / "b").exists()


def test_too_few_calibration_samples_are_refused_before_any_stage(tmp_path):
    """Calibration refuses fewer than 16 samples; the build says so before it measures or exports anything."""
    res = cli("build", "--arch", ARCH, "--input-shape", "1,1,28,28", "--target", "cpu", "--calib", "builtin:digits:train",
              "--calib-samples", "4", "--out", str(tmp_path / "b"))
    assert res.returncode != 0
    assert "--calib-samples 4 is too few" in _one_error_line(res)
    assert not (tmp_path / "b").exists()


def test_demo_trains_on_real_data_and_caches(tmp_path):
    """The demo at a tiny size on scikit-learn's digits: trains, reports accuracy, reuses its cache."""
    pytest.importorskip("sklearn")
    args = ["demo", "--data", "builtin:digits:train", "--epochs", "4", "--train-limit", "1400", "--out", str(tmp_path), "--no-build", "--json", "-q"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout)
    assert first["demo_model"]["accuracy"] > 80.0  # ten classes: chance is 10%
    ckpt = tmp_path / "demo.pth"
    written = ckpt.stat().st_mtime_ns
    again_res = cli(*[a for a in args if a != "-q"])
    again = json.loads(again_res.stdout)
    # reused, not retrained: the same file, untouched, and the log says so
    assert ckpt.stat().st_mtime_ns == written and "using the cached" in again_res.stderr
    assert again["demo_model"]["accuracy"] == first["demo_model"]["accuracy"]
    retrained = cli(*args, "--retrain")
    assert retrained.returncode == 0 and ckpt.stat().st_mtime_ns != written


def test_build_rejects_missing_data_before_any_stage(tmp_path):
    ckpt = tmp_path / "m.pth"
    from hadmc_deploy.models.demo import demo_cnn

    torch.save({"arch": ARCH, "state_dict": demo_cnn().state_dict(), "input_shape": [1, 1, 28, 28]}, ckpt)
    out = tmp_path / "build"
    res = cli("build", str(ckpt), "--calib", str(tmp_path / "missing.npz"), "--out", str(out))
    assert res.returncode == 8
    assert "missing.npz does not exist" in _one_error_line(res)
    assert not out.exists()


def test_bad_builtin_data_and_demo_budget_fail_before_any_work(tmp_path):
    """A mistyped builtin dataset, and a demo budget that cannot be asked, are one line each
    before any stage runs (no table measured, no demo model trained)."""
    ckpt = tmp_path / "m.pth"
    from hadmc_deploy.models.demo import demo_cnn

    torch.save({"arch": ARCH, "state_dict": demo_cnn().state_dict(), "input_shape": [1, 1, 28, 28]}, ckpt)
    out = tmp_path / "build"
    res = cli("build", str(ckpt), "--speedup", "2", "--calib", "builtin:fashion-mnst:train", "--out", str(out))
    assert res.returncode == 8 and "unknown builtin dataset 'fashion-mnst'" in _one_error_line(res)
    assert not out.exists()
    res = cli("build", str(ckpt), "--calib", "builtin:digits:val", "--out", str(out))
    assert res.returncode == 8 and "unknown split 'val'" in _one_error_line(res)
    for flag, value, message in (("--lr", "-1", "--lr -1.0 must be a positive number"), ("--kd-alpha", "2", "--kd-alpha 2.0 must lie in [0, 1]")):
        res = cli("build", str(ckpt), "--speedup", "2", "--calib", "builtin:digits:train", flag, value, "--out", str(out))
        assert res.returncode == 2 and message in _one_error_line(res)  # recovery's options, before the table and search
        assert not out.exists()
    res = cli("demo", "--speedup", "0.5", "--out", str(tmp_path / "demo"))
    assert res.returncode == 2 and "must be greater than 1" in _one_error_line(res)
    assert not (tmp_path / "demo" / "demo.pth").exists()


def test_an_input_shape_the_model_cannot_take_is_a_usage_error():
    """A wrong --input-shape (3 channels into a 1-channel stem) was an 'internal error' with a RuntimeError."""
    import pytest
    from torch import nn

    from hadmc_deploy.errors import UsageError
    from hadmc_deploy.profile import profile_model

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten())
    assert profile_model(model, (2, 1, 8, 8)).macs > 0
    with pytest.raises(UsageError, match=r"does not run on an input of shape \[2, 3, 8, 8\]"):
        profile_model(model, (2, 3, 8, 8))
