"""`hadmc-deploy bench`: latency and throughput of an artifact (or a bare .onnx) through its backend."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from rich.table import Table

from hadmc_deploy.errors import ArtifactError, UsageError
from hadmc_deploy.ui import UI

HELP = "benchmark an artifact directory or an .onnx file: p50/p90/p99 latency and throughput"
DESCRIPTION = """Run ARTIFACT through the backend that built it (read from its metadata.json) and print
latency percentiles and throughput for each --batch. A bare .onnx file runs on ONNX Runtime
with the same session options a built artifact records. Inputs are random: latency does not
depend on their values. Timings on a shared machine move 20-30%: compare ratios measured
in one run.

examples:
  hadmc-deploy bench build/demo/artifacts/cpu/pruned-int8
  hadmc-deploy bench model.onnx --batch 1 8 32 --runs 100
  hadmc-deploy bench build/out/artifacts/cpu/baseline-fp32 --threads 1 --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory written by a build, or an .onnx file")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], metavar="N", help="batch sizes to time (default 1)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per batch size (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: what the artifact records)")


def _load(args: argparse.Namespace) -> Any:
    from hadmc_deploy.backends import Artifact
    from hadmc_deploy.backends.onnxruntime import adhoc_artifact

    path = Path(args.artifact)
    if path.is_file() and path.suffix == ".onnx":
        return adhoc_artifact(path, args.threads)
    if path.is_file():
        raise ArtifactError(f"{path} is neither an artifact directory nor an .onnx file", hint="pass the directory a build wrote, or model.onnx")
    artifact = Artifact.load(path)
    if args.threads is not None:
        # In memory only: the artifact on disk keeps what it was built with.
        artifact.metadata = copy.deepcopy(artifact.metadata)
        artifact.metadata.setdefault("session_options", {})["intra_op_num_threads"] = args.threads
    return artifact


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from hadmc_deploy.backends import get

    if any(b < 1 for b in args.batch) or args.runs < 1 or args.warmup < 0:
        raise UsageError("--batch and --runs must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    artifact = _load(args)
    backend = get(artifact.backend or "onnxruntime")
    if args.threads is not None and backend.name != "onnxruntime":
        ui.warn(f"--threads applies to ONNX Runtime only; backend {backend.name} ignores it")
    results = []
    for batch in ui.track(args.batch, f"bench {artifact.path.name if not artifact.metadata.get('adhoc') else artifact.model_file}"):
        results.append(backend.benchmark(artifact, batch=batch, warmup=args.warmup, runs=args.runs))
    threads = (artifact.metadata.get("session_options") or {}).get("intra_op_num_threads")
    table = Table(title=f"{artifact.model_path}  ({backend.name}, {artifact.metadata.get('precision', '?')}, threads {threads})")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "throughput /s"):
        table.add_column(col, justify="right")
    for stats in results:
        table.add_row(str(stats.batch), f"{stats.p50_ms:.3f}", f"{stats.p90_ms:.3f}", f"{stats.p99_ms:.3f}", f"{stats.mean_ms:.3f}", f"{stats.throughput:.1f}")
    ui.out.print(table)
    ui.out.print(f"{args.runs} timed runs after {args.warmup} warm-up runs per batch size; random inputs")
    return {
        "artifact": str(artifact.path if not artifact.metadata.get("adhoc") else artifact.model_path),
        "backend": backend.name,
        "precision": artifact.metadata.get("precision"),
        "device": backend.describe_device(),
        "threads": threads,
        "results": [s.to_dict() for s in results],
    }
