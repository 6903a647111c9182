"""Build options: defaults < --config TOML < command line, unknown keys, plan.json replay, --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pipeline_models import TINY_ARCH

from hadmc_deploy.cli import main
from hadmc_deploy.config import OPTIONS, load_config, merge_options
from hadmc_deploy.errors import UsageError


def test_defaults_config_cli_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "build.toml"
    cfg.write_text('speedup = 2.0\nsearch = "greedy"\nbatch = [1, 4]\ncalib-samples = 64\n')
    merged = merge_options({"speedup": 1.5, "batch": None}, load_config(cfg))
    assert merged["speedup"] == 1.5  # command line wins
    assert merged["search"] == "greedy" and merged["batch"] == (1, 4) and merged["calib_samples"] == 64  # config
    assert merged["importance"] == "l1" and merged["runs"] == 50  # defaults
    assert set(merged) == {o.name for o in OPTIONS}


def test_build_table_section_and_bad_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('[build]\ntarget = "t4"\n')
    assert load_config(cfg)["target"] == "t4"
    cfg.write_text("speedupp = 2\n")
    with pytest.raises(UsageError, match="did you mean 'speedup'"):
        load_config(cfg)
    cfg.write_text('speedup = "fast"\n')
    with pytest.raises(UsageError, match="must be a float"):
        load_config(cfg)
    cfg.write_text('search = "random"\n')
    with pytest.raises(UsageError, match="one of knapsack"):
        load_config(cfg)


def test_dry_run_uses_config_and_cli_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "build.toml"
    cfg.write_text('speedup = 3.0\nprecision = "fp32"\nsearch = "uniform"\n')
    out = tmp_path / "dry"
    # the analytic latency model: a table measured on a loaded machine may judge 1.5x out of reach (exit 14), which is not what this tests
    argv = ["build", "--arch", TINY_ARCH, "--input-shape", "1,1,16,16", "--config", str(cfg), "--speedup", "1.5", "--round-to", "4", "--out", str(out),
            "--no-measure-lut", "--dry-run", "--json", "-q"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] and result["predicted_speedup"] >= 1.5 and result["narrowed"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["options"]["speedup"] == 1.5 and plan["options"]["search"] == "uniform"
    assert not (out / "report.json").exists() and not (out / "model.onnx").exists()
    # plan.json replays: as a config its options come back unchanged.
    replay = load_config(out / "plan.json")
    assert replay["speedup"] == 1.5 and replay["search"] == "uniform"


def test_contradicting_budgets_are_a_usage_error(tmp_path: Path) -> None:
    argv = ["build", "--arch", TINY_ARCH, "--input-shape", "1,1,16,16", "--speedup", "2", "--latency-ms", "1", "--precision", "fp32", "--out", str(tmp_path / "x"), "-q"]
    assert main(argv) == UsageError.exit_code
