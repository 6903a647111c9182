"""A finished build's graphs timed again the way its latency check and decide stage timed them, in
several passes: does the level move between passes, and do the two stages' graphs run alike?

    .venv/bin/python tools/time_build_stages.py build/demo/build-cpu --passes 3

Each pass times, in 7 interleaved rounds of 8 runs (the stages' estimator: each graph's fastest
round), the latency check's two graphs (`latency_check/baseline.onnx`, or the shipped `baseline.onnx`
where that stage exported as shipped, and `latency_check/plan.onnx`, built as that stage builds them:
INT8 with speed-only timing ranges) beside the decide stage's artifacts of the
build's precision (`artifacts/<target>/baseline-<precision>`, `pruned-<precision>`). Why:
`build/self_check.py` checks the table against the faster of the two stages' timings of each
graph, on the evidence that the two stages' graphs run alike and that the machine's level moves
between passes, both graphs together.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_deploy.backends import Artifact  # noqa: E402
from hadmc_deploy.backends.request import BuildRequest  # noqa: E402
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.latency.whole_model import TimingRanges  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, WHOLE_MODEL_SECONDS  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    report = json.loads((args.build_dir / "report.json").read_text())
    check = report.get("closed_loop", {}).get("latency_check") or {}
    if not check.get("checked"):
        parser.error(f"{args.build_dir} has no latency check to compare with (build with a --speedup budget)")
    precision, batch = check["precision"], int(check["batch"])
    backend = get_backend("onnxruntime")
    shape = tuple(report["model"]["input_shape"])
    arts = {}
    with tempfile.TemporaryDirectory(prefix="hadmc-stages-") as tmp:
        for name in ("baseline", "plan"):
            onnx_file = args.build_dir / "latency_check" / f"{name}.onnx"
            if name == "baseline" and not onnx_file.is_file():
                onnx_file = args.build_dir / "baseline.onnx"  # exported as shipped: the latency check timed the export stage's graph
            out = Path(tmp) / name
            if precision == "int8":
                arts[f"latency check: {name}"] = TimingRanges((batch, *shape[1:])).build(backend, onnx_file, out)
            else:
                arts[f"latency check: {name}"] = backend.build(BuildRequest(onnx_file, precision, out, backend.default_target()))
        for model in ("baseline", "pruned"):
            folder = args.build_dir / "artifacts" / "cpu" / f"{model}-{precision}"
            if folder.is_dir():
                arts[f"decide: {model}-{precision}"] = Artifact.load(folder)
        print(f"{args.build_dir}: {precision}, batch {batch}; in the build: latency check "
              + ", ".join(f"{k} {v:.3f}" for k, v in check["measured_ms"].items()) + " ms; decide "
              + ", ".join(f"{c['name']} {c['p50_ms']:.3f}" for c in report["decision"]["candidates"] if c["name"].endswith(precision)) + " ms")
        for k in range(args.passes):
            rounds: dict[str, list[float]] = {n: [] for n in arts}
            for _ in range(WHOLE_MODEL_ROUNDS):
                for name, art in arts.items():
                    rounds[name].append(backend.benchmark(art, batch=batch, warmup=2, runs=WHOLE_MODEL_RUNS, min_seconds=WHOLE_MODEL_SECONDS).p50_ms)
                    backend.release_sessions()
            print(f"pass {k + 1}: " + "; ".join(f"{n} {min(v):.3f} ms" for n, v in rounds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
