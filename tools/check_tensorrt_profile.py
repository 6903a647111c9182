"""check_tensorrt.py's per-layer profiling step: TensorRT's IProfiler on each built engine, mapped to ONNX nodes.

Why a check: the mapping from layer names to ONNX nodes (`backends/tensorrt_layer_map.py`)
is unit-tested on names written from TensorRT's naming scheme; only a real engine shows the
names this TensorRT actually gives. Each engine (built with profiling_verbosity="detailed")
is profiled at the largest benchmark batch and two things are checked, both printed:
* the per-layer sum against the p50 the benchmark measured without the profiler: the
  profile leaves out launch gaps (lower) and adds an event pair per layer (higher), so
  a ratio outside PROFILE_RATIO means the reports are wrong, not noisy;
* the share of the layer time that maps to weighted ONNX nodes: below MIN_ATTRIBUTED the
  names did not resolve (TensorRT changed its naming, or the engine lost its layer names).
"""

from __future__ import annotations

from typing import Any

#: per-layer sum / unprofiled p50 accepted as describing the same engine.
PROFILE_RATIO = (0.3, 3.0)
#: least share of the per-layer sum that must land on weighted ONNX nodes.
MIN_ATTRIBUTED = 0.5


def profile_problem(prof: dict[str, Any]) -> str | None:
    """Why a profile row fails the check, or None."""
    lo, hi = PROFILE_RATIO
    if not lo <= prof["ratio"] <= hi:
        return (f"per-layer sum {prof['layer_sum_ms']:.3f} ms is {prof['ratio']:.2f}x the measured p50 "
                f"{prof['measured_p50_ms']:.3f} ms (accepted {lo}-{hi}x)")
    if prof["attributed_share"] < MIN_ATTRIBUTED:
        return (f"only {prof['attributed_share']:.0%} of the layer time maps to ONNX nodes "
                f"(unattributed e.g. {', '.join(prof['unattributed_layers'][:3])})")
    return None


def profile_variant(artifact: Any, batch: int, measured_p50_ms: float, runs: int, warmup: int) -> dict[str, Any]:
    """Profile one built engine and map its layers to the ONNX graph it was parsed from."""
    from hadmc_deploy.backends.tensorrt_profile import attribute_layers, parsed_onnx, profile_engine

    layer_ms = profile_engine(artifact.path, batch=batch, runs=runs, warmup=warmup)
    got = attribute_layers(layer_ms, parsed_onnx(artifact.path))
    layer_sum = sum(layer_ms.values())
    prof = {
        "batch": batch, "layers": len(layer_ms), "layer_sum_ms": layer_sum, "measured_p50_ms": measured_p50_ms,
        "ratio": layer_sum / measured_p50_ms if measured_p50_ms > 0 else float("inf"),
        "attributed_share": 1.0 - got.unattributed_ms / layer_sum if layer_sum > 0 else 0.0,
        "node_ms": got.node_ms, "unattributed_ms": got.unattributed_ms, "unattributed_layers": got.unattributed_layers[:20],
        "split_layers": got.split_layers, "missing_nodes": got.missing_nodes, "layer_ms": layer_ms,
    }
    prof["problem"] = profile_problem(prof)
    return prof


def print_profile(model: str, variant: str, prof: dict[str, Any]) -> None:
    print(f"{model} {variant}: batch {prof['batch']}: per-layer sum {prof['layer_sum_ms']:.3f} ms vs measured p50 "
          f"{prof['measured_p50_ms']:.3f} ms ({prof['ratio']:.2f}x); {prof['layers']} layers, "
          f"{prof['unattributed_ms']:.3f} ms unattributed; {prof['problem'] or 'ok'}")
    total = max(prof["layer_sum_ms"], 1e-12)
    for node, ms in prof["node_ms"].items():
        print(f"    {node:<48} {ms:8.4f} ms  {100 * ms / total:5.1f}%")
    if prof["missing_nodes"]:
        print(f"    no layer named: {', '.join(prof['missing_nodes'])}")


def profile_markdown(model: str, variants: list[dict[str, Any]]) -> list[str]:
    """A summary row per profiled engine and one node table with a column per engine."""
    rows = [v for v in variants if "profile" in v]
    failed = [v for v in variants if "profile_error" in v]
    if not rows and not failed:
        return []
    lines = [f"Per-layer profile of {model} (TensorRT IProfiler, mapped to the ONNX graph each engine parsed):", "",
             "| variant | batch | layer sum ms | measured p50 ms | ratio | unattributed ms | layers | check |",
             "|---|---|---|---|---|---|---|---|"]
    for v in rows:
        p = v["profile"]
        lines.append(f"| {v['variant']} | {p['batch']} | {p['layer_sum_ms']:.3f} | {p['measured_p50_ms']:.3f} | {p['ratio']:.2f}x | "
                     f"{p['unattributed_ms']:.3f} | {p['layers']} | {p['problem'] or 'ok'} |")
    lines += [f"| {v['variant']} | | | | | | | {v['profile_error']} |" for v in failed]
    nodes = list(dict.fromkeys(n for v in rows for n in v["profile"]["node_ms"]))
    if nodes:
        lines += ["", "| ONNX node | " + " | ".join(f"{v['variant']} ms" for v in rows) + " |", "|---|" + "---|" * len(rows)]
        for n in nodes:
            cells = [f"{v['profile']['node_ms'][n]:.4f}" if n in v["profile"]["node_ms"] else "-" for v in rows]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return [*lines, ""]
