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


def correct_count(logits: np.ndarray, labels: np.ndarray) -> int:
    """Rows whose argmax is the label; a row holding NaN/Inf counts as wrong (never as a lucky argmax)."""
    flat = np.asarray(logits).reshape(len(labels), -1)
    finite = np.isfinite(flat).all(axis=1)
    return int(((flat.argmax(axis=1) == np.asarray(labels)) & finite).sum())


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of logits (N, classes) against labels; the project's one definition."""
    return 100.0 * correct_count(logits, labels) / max(len(labels), 1)


def output_tensors(out: Any) -> list[Any]:
    """Every tensor a PyTorch model returned (a tensor, or tuples/lists/dicts of them), in order;
    anything else is skipped (`onnx_verify.flatten_outputs` is the strict one, for export)."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in output_tensors(item)] if isinstance(out, (list, tuple)) else []


def first_output(out: Any) -> Any:
    """A classifier's scores: the model's first output tensor, as its ONNX export's first output is
    what every ONNX-side accuracy reads (a model may return more, e.g. logits and an embedding)."""
    tensors = output_tensors(out)
    if not tensors:
        raise TypeError(f"the model returned {type(out).__name__}, not a tensor or a tuple/list/dict of tensors")
    return tensors[0]


def torch_accuracy(model: Any, data: ArrayDataset, batch_size: int = EVAL_BATCH, device: Any = "cpu") -> float:
    """Top-1 accuracy (percent) of a PyTorch model's first output in eval mode; its train/eval mode is restored."""
    import torch

    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for xb, yb in data.batches(batch_size):
                logits = first_output(model(torch.from_numpy(xb).to(device))).float().cpu().numpy()
                correct += correct_count(logits, yb)
    finally:
        model.train(was_training)
    return 100.0 * correct / max(len(data), 1)


def _accuracy_from_logits(run_batch: Any, data: ArrayDataset, batch_size: int, ui: UI, desc: str, confusion: np.ndarray | None = None) -> float:
    """Top-1 accuracy; with `confusion` (labels x classes), each image's (label, top-1 class) is counted into it."""
    correct = 0
    n_batches = (len(data) + batch_size - 1) // batch_size
    with ui.progress(desc, n_batches) as task:
        for xb, yb in data.batches(batch_size):
            logits = np.asarray(run_batch(np.ascontiguousarray(xb, dtype=np.float32)))
            correct += correct_count(logits, yb)
            if confusion is not None:
                top1 = logits.reshape(len(yb), -1).argmax(axis=1)
                inside = (np.asarray(yb) < confusion.shape[0]) & (top1 < confusion.shape[1])
                np.add.at(confusion, (np.asarray(yb)[inside], top1[inside]), 1)
            task.advance()
    return 100.0 * correct / max(len(data), 1)


def label_order_warning(confusion: np.ndarray) -> str | None:
    """A warning when the original model's predictions match the labels far better under a
    renumbering of the classes than as numbered (greedy one-to-one matching on the confusion
    counts), else None. Why: class folders are numbered by their sorted names, which is rarely a
    model's own class order; a Fashion-MNIST CNN at 84% scored 31% on a folder of its test images
    (four of the ten folders happened to sort to their own index) with no warning, and every accuracy, guard
    and exit code of that build was judged against the wrong labels."""
    total = float(confusion.sum())
    if total <= 0 or min(confusion.shape) < 2:
        return None
    counts = confusion.astype(float).copy()
    mapping: dict[int, int] = {}
    while len(mapping) < min(counts.shape) and counts.max() > 0:
        label, cls = np.unravel_index(int(counts.argmax()), counts.shape)
        mapping[int(label)] = int(cls)
        counts[label, :] = -1
        counts[:, cls] = -1
    as_numbered = 100.0 * float(np.trace(confusion[: min(confusion.shape), : min(confusion.shape)])) / total
    renumbered = 100.0 * sum(float(confusion[label, cls]) for label, cls in mapping.items()) / total
    moved = [(label, cls) for label, cls in sorted(mapping.items()) if label != cls]
    if renumbered - as_numbered < LABEL_ORDER_MARGIN_POINTS or not moved:
        return None
    examples = ", ".join(f"label {label} -> class {cls}" for label, cls in moved[:3])
    return (f"the original model scores {as_numbered:.2f}% on the evaluation data as labelled, but {renumbered:.2f}% if {len(moved)} of its "
            f"labels were renumbered ({examples}{', ...' if len(moved) > 3 else ''}): the data's class numbering is probably not the model's "
            "(class folders are numbered by their sorted names); give data labelled in the model's class order before trusting any number here")


#: how many points better the renumbered labels must score before the label order is questioned.
LABEL_ORDER_MARGIN_POINTS = 20.0


def onnx_accuracy(onnx_or_session: str | Path | Any, data: ArrayDataset, *, batch_size: int = EVAL_BATCH, ui: UI | None = None) -> float:
    """Top-1 accuracy of an ONNX file (or an open ONNX Runtime session) on the CPU: float or QDQ graphs."""
    import onnxruntime as ort

    ui = ui or quiet_ui()
    if isinstance(onnx_or_session, (str, Path)):
        sess = ort.InferenceSession(str(onnx_or_session), ort.SessionOptions(), providers=["CPUExecutionProvider"])
        desc = f"accuracy {Path(onnx_or_session).name}"
    else:
        sess, desc = onnx_or_session, "accuracy"
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else batch_size

    def run(xb: np.ndarray) -> np.ndarray:
        if len(xb) == step or not isinstance(fixed, int):
            return sess.run(None, {name: xb})[0]
        return np.concatenate([sess.run(None, {name: xb[i : i + 1]})[0] for i in range(len(xb))])

    return _accuracy_from_logits(run, data, step, ui, desc)


def artifact_accuracy(backend: Any, artifact: Any, data: ArrayDataset, *, batch_size: int = EVAL_BATCH, ui: UI | None = None,
                      confusion: np.ndarray | None = None) -> float:
    """Top-1 accuracy of an artifact run through its backend's `run` (and its confusion counts, see `_accuracy_from_logits`)."""
    ui = ui or quiet_ui()
    input_name = str(artifact.metadata.get("input_name") or "input")

    def run(xb: np.ndarray) -> np.ndarray:
        outputs = backend.run(artifact, {input_name: xb})
        return outputs.get("output", next(iter(outputs.values())))

    return _accuracy_from_logits(run, data, batch_size, ui, f"accuracy {artifact.path.name}", confusion)


#: accuracy within this many points of chance (or below it) is "chance level".
CHANCE_MARGIN_POINTS = 5.0


def chance_level_warning(accuracy: float, num_classes: int, *, what: str = "the original model") -> str | None:
    """A warning when `accuracy` is near 100/num_classes (the model guesses), naming the likely cause; else None.

    Why: a baseline at chance is almost always data that does not match training (wrong
    --mean/--std, [0,255] vs [0,1] pixels, wrong channel order or size), and every later
    number (pruning cost, INT8 drop, the accuracy guard) is then meaningless.
    """
    if num_classes < 2:
        return None
    chance = 100.0 / num_classes
    margin = max(CHANCE_MARGIN_POINTS, 0.5 * chance)
    if accuracy > chance + margin:
        return None
    return (
        f"{what} scores {accuracy:.2f}% on the evaluation data, chance level for {num_classes} classes ({chance:.1f}%): "
        "the data is probably not preprocessed as in training - check --mean/--std (normalisation), the pixel scale, "
        "--channels and --resize, and that the labels match the model's classes"
    )


@dataclass
class VariantLatency:
    """Latency of one artifact at each batch size (LatencyStats dicts keyed by batch)."""

    per_batch: dict[int, dict[str, Any]] = field(default_factory=dict)
    threads: Any = None


#: timed seconds per artifact and batch at most (but never fewer than MIN_TIMED_RUNS runs): 50 runs
#: of every variant at every batch took 64-98 s of a ResNet-18 build at 224 (FP32 at batch 32 runs
#: 0.35 s); a run that long is its own average, and the decision is timed apart, side by side.
#: At 1 s the stage still took 21 s of that build (18 artifact-batch pairs); 0.5 s gives a fast
#: model (a 1 ms run) its 50 runs and a 20 ms one 25.
MAX_TIMED_SECONDS = 0.5
#: runs timed even when they outlast MAX_TIMED_SECONDS. 10 spent 29 s of a ResNet-18 build's
#: evaluate stage at 224 (six variants at batches 1, 8 and 32; FP32 at batch 32 runs 0.5-0.8 s):
#: 3 runs of that length give a median that is as repeatable as the machine is (the runs
#: count is recorded with every LatencyStats).
MIN_TIMED_RUNS = 3
#: the cap at the other batches: the decide stage times the candidates again, side by side, at the
#: primary batch only, so the others are the report's throughput columns. With 0.5 s everywhere the
#: evaluate stage took 12.5 s of a ResNet-18 build at 224, two thirds of it at batches 8 and 32.
SECONDARY_TIMED_SECONDS = 0.25


def benchmark_artifact(backend: Any, artifact: Any, batches: tuple[int, ...], *, warmup: int, runs: int,
                       max_seconds: float | None = MAX_TIMED_SECONDS, ui: UI | None = None) -> VariantLatency:
    """p50/p90/p99 and throughput at each batch size through the artifact's backend; with
    `max_seconds`, slow models get fewer runs (one probe run after a warm-up sizes them; at least
    MIN_TIMED_RUNS). The build's evaluate stage passes the batches other than the primary one with
    SECONDARY_TIMED_SECONDS: the decide stage times the primary batch side by side."""
    ui = ui or quiet_ui()
    out = VariantLatency(threads=artifact.metadata.get("session_options", {}).get("intra_op_num_threads") if isinstance(artifact.metadata.get("session_options"), dict) else None)
    for batch in batches:
        n_warmup, n_runs = warmup, runs
        cap = max_seconds
        if cap is not None:
            # one cold run sizes the rest: it is never faster than a warm one, so it can only ask
            # for fewer runs, and a slow model gets MIN_TIMED_RUNS either way (a warm-up plus a
            # probe run was 2 x 1 s of a ResNet-18 build's evaluate stage at batch 32, for nothing)
            probe = backend.benchmark(artifact, batch=batch, warmup=0, runs=1)
            per_run_s = max(probe.p50_ms, 1e-3) / 1000.0
            n_runs = min(runs, max(MIN_TIMED_RUNS, int(cap / per_run_s)))
            # the probe run warmed this session (the backend keeps it): a run over a quarter of
            # the time cap needs no more
            n_warmup = min(warmup, int(0.25 * cap / per_run_s))
        stats = backend.benchmark(artifact, batch=batch, warmup=n_warmup, runs=n_runs)
        out.per_batch[batch] = stats.to_dict()
    return out


def file_size(path: str | Path) -> int:
    """Bytes of a model file (or of every file in an artifact directory but its metadata)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".engine", ".plan", ".pth", ".pt", ".data"))
    return path.stat().st_size if path.is_file() else 0

