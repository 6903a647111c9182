"""INT8 graphs with layers kept in float, run with and without ONNX Runtime's QDQ propagation.

    .venv/bin/python tools/bench_qdq_propagation.py [--model resnet18|mobilenet_v2|demo_cnn] [--channels 3] [--size 224] [--rounds 9]

The accuracy guard (and the mixed variant) keep some layers of an INT8 graph in float.
ORT's QDQPropagationTransformer then moves the QuantizeLinear after a float MaxPool
above it, and the pool runs on uint8 in NCHW, a slow kernel. This script measures it:
a random-initialised model (speed only) is exported as a build exports it, quantized
(random-input ranges: they change scales, never the graph) all-INT8, with its stem
conv in float, and with the stem and every 1x1 downsample in float; each graph runs
in ONNX Runtime's deployment session with the optimizer on and off, side by side in
interleaved rounds. It prints the fastest round's p50 per cell, which is what
`backends/ort_optimizer_choice.py` measures for every partly-float artifact.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnx

from hadmc_deploy.backends.ort_optimizer_choice import QDQ_PROPAGATION, has_float_and_int8_layers
from hadmc_deploy.backends.ort_session import make_session, random_feeds, time_session
from hadmc_deploy.calibration.qdq import write_qdq
from hadmc_deploy.latency.whole_model import _timing_ranges, export_for_timing


def build_model(name: str, channels: int):  # noqa: ANN201 - a torch module
    """Random-initialised: only speed is measured."""
    from hadmc_deploy.models.demo import demo_cnn
    from hadmc_deploy.models.mobilenet import mobilenet_v2
    from hadmc_deploy.models.resnet import resnet18

    return {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2, "demo_cnn": demo_cnn}[name](in_channels=channels)


def measure(model_name: str, shape: tuple[int, ...], rounds_n: int, runs: int) -> list[str]:
    """Markdown lines: one table for `model_name` at `shape`."""
    with tempfile.TemporaryDirectory(prefix="hadmc-qdqprop-") as tmp:
        src = export_for_timing(build_model(model_name, shape[1]).eval(), shape, Path(tmp) / "float.onnx")
        ranges = _timing_ranges(src, shape)
        graph = onnx.load(str(src))
        convs = [n for n in graph.graph.node if n.op_type == "Conv"]
        init_shapes = {i.name: list(i.dims) for i in graph.graph.initializer}
        pointwise = [n.name for n in convs if init_shapes.get(n.input[1], [0, 0, 0, 0])[2:] == [1, 1]]
        graphs = {
            "all INT8": write_qdq(src, ranges, Path(tmp) / "all.onnx", form="qdq_u8s8"),
            "stem conv float": write_qdq(src, ranges, Path(tmp) / "stem.onnx", form="qdq_u8s8", float_nodes=[convs[0].name]),
            "stem + 1x1 convs float": write_qdq(src, ranges, Path(tmp) / "stem1x1.onnx", form="qdq_u8s8", float_nodes=[convs[0].name, *pointwise]),
        }
        sessions = {}
        for label, path in graphs.items():
            sessions[(label, "on")] = make_session(path)
            sessions[(label, "off")] = make_session(path, disabled_optimizers=(QDQ_PROPAGATION,))
        feeds = {k: random_feeds(s, batch=1) for k, s in sessions.items()}
        rounds: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
        for _ in range(rounds_n):
            for key, sess in sessions.items():
                rounds[key].append(time_session(sess, feeds[key], 3, runs, 1).p50_ms)
        lines = [f"### {model_name}, input {list(shape)}", "",
                 f"| graph | float and INT8 layers | {QDQ_PROPAGATION} on (ms) | off (ms) | on / off |", "|---|---|---|---|---|"]
        for label, path in graphs.items():
            on, off = min(rounds[(label, "on")]), min(rounds[(label, "off")])
            mixed = has_float_and_int8_layers(onnx.load(str(path), load_external_data=False))
            lines.append(f"| {label} | {'yes' if mixed else 'no'} | {on:.3f} | {off:.3f} | {on / off:.2f}x |")
        return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["resnet18", "mobilenet_v2"], choices=("resnet18", "mobilenet_v2", "demo_cnn"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) there, e.g. docs/qdq_propagation.md")
    args = ap.parse_args()
    shape = (1, args.channels, args.size, args.size)
    from hadmc_deploy.targets import cpu_model_name, detect_cpu_isa

    lines = ["# INT8 graphs with float layers: ONNX Runtime's QDQ propagation, on and off", "",
             f"Written by `python tools/bench_qdq_propagation.py --model {' '.join(args.model)} --size {args.size} --channels {args.channels} --rounds {args.rounds} --runs {args.runs}"
             f"{' --out ' + str(args.out) if args.out else ''}` on {cpu_model_name()} ({detect_cpu_isa()}), "
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}. Random-initialised models (speed only), batch 1, the deployment session "
             f"options; each cell is the fastest of {args.rounds} interleaved rounds' p50 of {args.runs} runs. Timings on this shared "
             "machine move 20-30% between runs; compare within one table.", "",
             "`backends/ort_optimizer_choice.py` makes the same measurement for every INT8 artifact with float layers beside quantized "
             "ones and records in its session options whether it runs without the optimizer. The all-INT8 rows are the control: "
             "the optimizer has nothing to move there, so their on / off ratio is this run's noise.", ""]
    for name in args.model:
        lines += measure(name, shape, args.rounds, args.runs)
    text = "\n".join(lines)
    print(text)
    if args.out:
        from hadmc_deploy.fileio import write_text_atomic

        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
