"""`hadmc-deploy export` and `hadmc-deploy bench`: exit codes, one-line errors, --json purity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hadmc_deploy.cli import main

EXE = str(Path(sys.executable).with_name("hadmc-deploy"))
ARCH = "hadmc_deploy.models.demo:demo_cnn"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The installed entry point exports the demo CNN; stdout must be exactly one JSON object."""
    out = tmp_path_factory.mktemp("cli") / "demo.onnx"
    npz = out.parent / "verify.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, x=rng.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8), y=np.arange(5))
    res = cli("export", "--arch", ARCH, "--input-shape", "1,1,28,28", "-o", str(out), "--verify-data", str(npz), "--json")
    return out, res


def test_export_cli_json_is_the_only_stdout(exported):
    out, res = exported
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # the whole of stdout parses: nothing else was printed there
    assert data["ok"] is True and data["path"] == str(out) and out.is_file()
    assert data["exporter"] in ("dynamo", "legacy") and data["verification"]["inputs"] == "real"
    assert data["verification"]["samples"] == 5 and data["max_abs_err"] < 1e-4
    assert "exported" in res.stderr  # the human table went to stderr


def test_bench_cli_on_a_bare_onnx_json(exported):
    out, _ = exported
    res = cli("bench", str(out), "--batch", "1", "2", "--runs", "3", "--warmup", "1", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [r["batch"] for r in data["results"]] == [1, 2] and all(r["runs"] == 3 for r in data["results"])
    assert data["backend"] == "onnxruntime" and data["threads"] == 1
    assert all(r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0 for r in data["results"])


def test_bench_artifact_dir_threads_override_is_in_memory_only(exported, tmp_path, capsys):
    from hadmc_deploy.backends import BuildRequest, get
    from hadmc_deploy.targets import cpu_profile

    out, _ = exported
    art = get("onnxruntime").build(BuildRequest(out, "fp32", tmp_path / "art", cpu_profile()))
    before = (art.path / "metadata.json").read_text()
    assert main(["bench", str(art.path), "--runs", "2", "--warmup", "0", "--threads", "1", "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["threads"] == 1 and data["precision"] == "fp32" and data["artifact"] == str(art.path)
    assert (art.path / "metadata.json").read_text() == before


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["bench", "no/such/dir"], 17, "does not exist"),
        (["bench", "{onnx}", "--runs", "0"], 2, "--runs"),
        (["bench", "{onnx}", "--threads", "0"], 2, "--threads"),
        (["bench", "{txt}"], 17, "neither an artifact directory"),
        (["export", "--arch", ARCH, "--input-shape", "1,3,28,28", "-o", "{tmp}/x.onnx"], 9, "fails on an input of shape"),
        (["export", "--arch", ARCH, "--input-shape", "1,1,28,28", "-o", "{tmp}/x.onnx", "--opset", "99"], 2, "opset"),
        (["export", "--arch", ARCH, "--input-shape", "1,1,28,28", "-o", "{tmp}/x.onnx", "--verify-data", "{tmp}/none.npz"], 8, "none.npz"),
    ],
)
def test_cli_errors_are_one_line_with_exit_codes(argv, code, needle, exported, tmp_path, capsys):
    out, _ = exported
    (tmp_path / "notes.txt").write_text("hi")
    argv = [a.format(onnx=out, tmp=tmp_path, txt=tmp_path / "notes.txt") for a in argv]
    assert main([*argv, "--json"]) == code
    captured = capsys.readouterr()
    err_lines = [ln for ln in captured.err.splitlines() if "error:" in ln]
    assert len(err_lines) == 1 and needle in err_lines[0]
    data = json.loads(captured.out)
    assert data["ok"] is False and data["exit_code"] == code
    assert not (tmp_path / "x.onnx").exists()
