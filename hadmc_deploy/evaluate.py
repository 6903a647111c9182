"""Accuracy and latency of every variant a build produces, measured the way it deploys.

Accuracy: a PyTorch model in eval mode, or an artifact run through its own
backend, or (when the target's backend is not on this machine) the portable
ONNX graph in an ONNX Runtime session, labelled as such. Latency: the backend's
`benchmark` at each batch size, side by side in one run so ratios are fair on
a shared machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.ui import UI, quiet_ui

EVAL_BATCH = 256


def torch_accuracy(model: Any, data: ArrayDataset, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy (percent) of a PyTorch model in eval mode."""
    from hadmc_deploy.train import evaluate_accuracy

    return float(evaluate_accuracy(model, data, batch_size=batch_size))


def _accuracy_from_logits(run_batch: Any, data: ArrayDataset, batch_size: int, ui: UI, desc: str) -> float:
    correct = 0
    n_batches = (len(data) + batch_size - 1) // batch_size
    with ui.progress(desc, n_batches) as task:
        for xb, yb in data.batches(batch_size):
            logits = np.asarray(run_batch(np.ascontiguousarray(xb, dtype=np.float32)))
            correct += int((logits.reshape(len(xb), -1).argmax(1) == yb).sum())
            task.advance()
    return 100.0 * correct / max(len(data), 1)


def onnx_accuracy(onnx_path: str | Path, data: ArrayDataset, *, batch_size: int = EVAL_BATCH, ui: UI | None = None) -> float:
    """Top-1 accuracy of an ONNX file in an ONNX Runtime CPU session (float or QDQ graphs)."""
    import onnxruntime as ort

    ui = ui or quiet_ui()
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size

    def run(xb: np.ndarray) -> np.ndarray:
        if len(xb) == step or not isinstance(fixed, int):
            return sess.run(None, {name: xb})[0]
        return np.concatenate([sess.run(None, {name: xb[i : i + 1]})[0] for i in range(len(xb))])

    return _accuracy_from_logits(run, data, step, ui, f"accuracy {Path(onnx_path).name}")


def artifact_accuracy(backend: Any, artifact: Any, data: ArrayDataset, *, batch_size: int = EVAL_BATCH, ui: UI | None = None) -> float:
    """Top-1 accuracy of an artifact run through its backend's `run`."""
    ui = ui or quiet_ui()
    input_name = str(artifact.metadata.get("input_name") or "input")

    def run(xb: np.ndarray) -> np.ndarray:
        outputs = backend.run(artifact, {input_name: xb})
        return outputs.get("output", next(iter(outputs.values())))

    return _accuracy_from_logits(run, data, batch_size, ui, f"accuracy {artifact.path.name}")


@dataclass
class VariantLatency:
    """Latency of one artifact at each batch size (LatencyStats dicts keyed by batch)."""

    per_batch: dict[int, dict[str, Any]] = field(default_factory=dict)
    threads: Any = None


def benchmark_artifact(backend: Any, artifact: Any, batches: tuple[int, ...], *, warmup: int, runs: int, ui: UI | None = None) -> VariantLatency:
    """p50/p90/p99 and throughput at each batch size through the artifact's backend."""
    ui = ui or quiet_ui()
    out = VariantLatency(threads=artifact.metadata.get("session_options", {}).get("intra_op_num_threads") if isinstance(artifact.metadata.get("session_options"), dict) else None)
    for batch in batches:
        stats = backend.benchmark(artifact, batch=batch, warmup=warmup, runs=runs)
        out.per_batch[batch] = stats.to_dict()
    return out


def file_size(path: str | Path) -> int:
    """Bytes of a model file (or of every file in an artifact directory but its metadata)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".engine", ".plan", ".pth", ".pt", ".data"))
    return path.stat().st_size if path.is_file() else 0

