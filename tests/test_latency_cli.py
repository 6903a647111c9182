"""`hadmc-deploy lut` and the latency part of `inspect`, driven through the CLI entry point."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import pytest

from hadmc_deploy.cli import main
from hadmc_deploy.commands.inspect_latency import describe_latency
from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.lut import read_table
from hadmc_deploy.loading import load_model
from hadmc_deploy.ui import UI

DEMO = ["--arch", "hadmc_deploy.models.demo:demo_cnn", "--input-shape", "1,1,28,28", "--target", "cpu", "--precision", "fp32"]
FAST = ["--grid-step", "64", "--warmup", "1", "--runs", "3", "--no-correction", "-q"]


@pytest.fixture(scope="module")
def demo_lut(tmp_path_factory):
    path = tmp_path_factory.mktemp("lut") / "demo.json"
    assert main(["lut", *DEMO, *FAST, "-o", str(path)]) == 0
    return path


def test_lut_command_writes_a_table_and_second_run_measures_nothing(demo_lut, capsys):
    table = read_table(demo_lut)
    assert len(table) > 20 and table.meta.precision == "fp32" and table.meta.backend == "onnxruntime"
    assert {e.spec.op for e in table.entries.values()} >= {"conv", "add", "linear", "globalpool"}
    capsys.readouterr()
    assert main(["lut", *DEMO, *FAST, "--json", "-o", str(demo_lut)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["measured"] == 0 and out["cached"] == out["requested"] > 0


def test_lut_command_bad_inputs(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert main(["lut", *DEMO, *FAST, "-o", str(bad)]) == LatencyModelError.exit_code
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["lut", *DEMO, *FAST, "--target", "nope", "-o", str(tmp_path / "x.json")]) == 2
    assert main(["lut", *DEMO, "--runs", "0", "-o", str(tmp_path / "x.json")]) == 2


def test_inspect_latency_per_layer_and_best_groups(demo_lut, capsys):
    loaded = load_model(None, "hadmc_deploy.models.demo:demo_cnn")
    shape = (1, 1, 28, 28)
    graph = trace(loaded.model, shape)
    args = argparse.Namespace(target="cpu", lut=str(demo_lut), force=False, targets_file=None)
    result = describe_latency(loaded, shape, graph, args, UI(quiet=True))["latency"]
    assert result["source"] == "lut"
    assert len(result["layers"]) == len(graph.layers)
    assert result["total_ms"] == pytest.approx(sum(layer["ms"] for layer in result["layers"]) + result["overhead_ms"])
    savings = [g["ms_per_channel"] for g in result["groups_by_saving"]]
    assert savings == sorted(savings, reverse=True)
    # the marks follow the measured prices: only groups whose step saved time (a noisy table may have none)
    saving_groups = {g["group"] for g in result["groups_by_saving"][:5] if g["saved_ms"] > 0}
    assert {layer["group"] for layer in result["layers"] if layer["best_to_prune"]} <= saving_groups
    assert "predicted latency" in capsys.readouterr().out
    # the same table with prices that grow with the work: narrower is always cheaper, so there are marks
    table = read_table(demo_lut)
    for key, entry in list(table.entries.items()):
        s = entry.spec
        work = s.in_channels * s.out_channels * s.kernel[0] * s.kernel[1] * s.out_hw[0] * s.out_hw[1] / s.groups + s.in_channels * s.in_hw[0] * s.in_hw[1]
        ms = 1e-3 + 1e-7 * work
        table.entries[key] = replace(entry, median_ms=ms, p90_ms=ms, min_ms=ms, mom_ms=ms)
    monotone = demo_lut.with_name("monotone.json")
    table.save(monotone)
    args = argparse.Namespace(target="cpu", lut=str(monotone), force=False, targets_file=None)
    result = describe_latency(loaded, shape, graph, args, UI(quiet=True))["latency"]
    marked = {layer["group"] for layer in result["layers"] if layer["best_to_prune"]}
    assert marked and marked <= {g["group"] for g in result["groups_by_saving"] if g["saved_ms"] > 0}
    # without a table: the analytic model, labelled
    args = argparse.Namespace(target="cpu", lut=None, force=False, targets_file=None)
    assert describe_latency(loaded, shape, graph, args, UI(quiet=True))["latency"]["source"] == "analytic"


def test_lut_command_cpu_clock(tmp_path):
    path = tmp_path / "cpu.json"
    assert main(["lut", *DEMO, *FAST, "--clock", "cpu", "-o", str(path)]) == 0
    table = read_table(path)
    assert table.meta.method["clock"] == "cpu" and table.meta.threads == 1
    assert main(["lut", *DEMO, *FAST, "-o", str(path)]) == 2  # wall clock cannot extend a cpu-clock table


def test_a_table_with_its_context_fit_states_its_spread(tmp_path, capsys):
    """`lut` with the context fit records each fitted plan's rounds and states the table's spread
    (latency/stated_spread.py); `inspect --lut` prints the prediction with it. A table without the
    fit (--no-correction, the fixture above) states none."""
    path = tmp_path / "ctx.json"
    capsys.readouterr()
    assert main(["lut", *DEMO, "--grid-points", "2", "--passes", "1", "--runs", "2", "--json", "-q", "-o", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stated_spread"] > 0.0 and math.isfinite(out["stated_spread"]) and out["measurement_spread"] > 0.0
    assert all(len(row["round_ms"]) == row["model_rounds"] for row in out["context"])
    loaded = load_model(None, "hadmc_deploy.models.demo:demo_cnn")
    graph = trace(loaded.model, (1, 1, 28, 28))
    args = argparse.Namespace(target="cpu", lut=str(path), force=False, targets_file=None)
    assert describe_latency(loaded, (1, 1, 28, 28), graph, args, UI(quiet=True))["latency"]["stated_spread"] == pytest.approx(out["stated_spread"])
