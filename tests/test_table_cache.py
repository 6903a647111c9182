"""The cache of measured tables (latency/table_cache.py): a cached table whose measurements spread
wide is measured once more and the steadier kept, marked so that it is not measured again."""

from __future__ import annotations

import json

import pytest
import torch

from hadmc_deploy.graph.trace import trace
from hadmc_deploy.latency.auto import MeasureOptions
from hadmc_deploy.latency.lut import read_table
from hadmc_deploy.latency.stated_spread import STEADY_SPREAD, measurement_spread
from hadmc_deploy.latency.table_cache import MEASURED_AGAIN, keep_steadier, measured_latency_model
from hadmc_deploy.models.demo import demo_cnn
from hadmc_deploy.targets import get_target


def _widen(path, miss: float) -> None:  # noqa: ANN001
    """Make the table at `path` show a measurement spread of about `miss`: its fit priced each of its
    own plans `miss` over its time."""
    data = json.loads(path.read_text())
    for row in data["context"]["fitted_on"]:
        row["predicted_ms"] = row["measured_ms"] * (1.0 + miss)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def demo():  # noqa: ANN201
    torch.manual_seed(0)
    model = demo_cnn().eval()
    shape = (1, 1, 28, 28)
    return model, shape, trace(model, shape), MeasureOptions(grid_points=2, passes=1, runs_per_pass=2, context_rounds=1, exporter="fast")


def test_a_cached_table_measured_on_a_busy_machine_is_measured_once_more(tmp_path, demo):
    """The cached table altered to show a 50% measurement spread: the next call measures a new one (real sessions), keeps
    whichever states less (the new one, unless this machine is busier than 50%), and marks it; a
    call after that reuses it whatever it states."""
    model, shape, graph, opts = demo
    lm, info = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, budget_s=120, options=opts)
    path = tmp_path / info["lut"].split("/")[-1]
    assert not info["cached"] and measurement_spread(lm.table) is not None
    _widen(path, 0.5)
    assert measurement_spread(read_table(path)) > STEADY_SPREAD
    lm2, info2 = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, budget_s=120, options=opts)
    again = info2[MEASURED_AGAIN]
    assert not info2["cached"] and again["earlier_spread"] > STEADY_SPREAD
    assert (again["kept"] == "new") == (again["new_spread"] < again["earlier_spread"])
    assert read_table(path).meta.method[MEASURED_AGAIN] and not list(tmp_path.glob("*.earlier.json"))
    _widen(path, 0.5)  # marked: reused as it is, not measured a third time
    _, info3 = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, options=opts)
    assert info3["cached"]


def test_keep_steadier_prefers_the_complete_table_stating_less(tmp_path, demo):
    """Between two tables of the same graph: the one whose measurements spread less wins; a new table
    stopped by its budget never replaces a complete earlier one."""
    model, shape, graph, opts = demo
    lm, info = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, budget_s=120, options=opts)
    path = tmp_path / info["lut"].split("/")[-1]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(path.read_text())
    _widen(earlier, 0.3)
    out: dict = {}
    assert keep_steadier(path, earlier, read_table(path), out) is not None and out[MEASURED_AGAIN]["kept"] == "new"
    earlier.write_text(path.read_text())  # now the earlier one is the steadier
    _widen(path, 0.3)
    new = read_table(path)
    assert keep_steadier(path, earlier, new, out).meta.method[MEASURED_AGAIN] and out[MEASURED_AGAIN]["kept"] == "earlier"
    earlier.write_text(path.read_text())
    _widen(earlier, 0.3)
    incomplete = read_table(path)
    incomplete.meta.method["complete"] = False
    keep_steadier(path, earlier, incomplete, out)
    assert out[MEASURED_AGAIN]["kept"] == "earlier" and read_table(path).meta.method["complete"]


def test_a_measuring_again_cut_short_is_resumed_and_compared(tmp_path, demo):
    """A process killed while measuring again leaves the earlier table moved aside: the next call
    resumes the table at the cache path and still keeps the steadier, leaving no file aside."""
    model, shape, graph, opts = demo
    _, info = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, budget_s=120, options=opts)
    path = tmp_path / info["lut"].split("/")[-1]
    aside = path.with_name(path.stem + ".earlier.json")
    aside.write_text(path.read_text())
    _widen(aside, 0.5)
    _, again = measured_latency_model(graph, model, shape, get_target("cpu"), "fp32", 1, tmp_path, options=opts)
    assert again[MEASURED_AGAIN]["kept"] == "new" and not aside.exists()
    assert read_table(path).meta.method[MEASURED_AGAIN]
