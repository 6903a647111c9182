"""Run the pruning architecture matrix and write docs/prune_matrix.md.

For every architecture of `hadmc_deploy.models.matrix` (and torchvision's own
definitions where torchvision is installed): trace the channel graph, prune 30%
and 50% of every prunable group (L1 importance; what `hadmc-deploy prune
--ratio` does) and record params/MACs before and after; run the zero-then-prune
equivalence check (random channel choices, exactly prunable groups). Then the
deployment path at the largest ratio: export the original and the pruned model
with `hadmc_deploy.export.export_onnx` (verified in ONNX Runtime), build FP32 and
INT8 (min/max ranges from random inputs: speed only, never accuracy) with the
ONNX Runtime backend and time all four interleaved. When `torch_pruning` is
importable, run its MagnitudePruner on the same models for comparison (a
comparison only: the product does not depend on it).

    .venv/bin/python tools/prune_matrix.py --input-size 96
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from hadmc_deploy.backends.request import BuildRequest
from hadmc_deploy.calibration.collect import collect_ranges
from hadmc_deploy.data import ArrayDataset
from hadmc_deploy.export import export_onnx
from hadmc_deploy.graph.align import uniform_plan_keep
from hadmc_deploy.graph.check import output_tensors, prune_equivalence
from hadmc_deploy.graph.trace import trace
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.importance import score_groups
from hadmc_deploy.latency.measure import get_backend
from hadmc_deploy.models.matrix import MATRIX, SLOW_ONLY, TORCHVISION
from hadmc_deploy.profile import human, profile_model
from hadmc_deploy.surgery import apply

ROOT = Path(__file__).resolve().parents[1]


def deploy_check(model: torch.nn.Module, pruned: torch.nn.Module, shape: tuple[int, ...], exporters: tuple[str, ...], rounds: int) -> dict:
    """Export both models (verified in ORT), build FP32 and INT8, time the four interleaved (median of round medians)."""
    backend = get_backend("onnxruntime")
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="prune-matrix-") as tmp:
        x = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
        calib = ArrayDataset(x, np.zeros(len(x), np.int64), "random normal (INT8 timing only)")
        artifacts = {}
        for tag, m in (("orig", model), ("pruned", pruned)):
            res = export_onnx(m, shape, Path(tmp) / f"{tag}.onnx", dynamic_batch=False, exporters=exporters)
            out[f"{tag}_onnx_err"] = res.max_abs_err
            out[f"{tag}_onnx_rel"] = res.max_rel_err
            out[f"{tag}_onnx_passed"] = res.verification.passed
            out["n_outputs"] = len(res.output_names)
            ranges = collect_ranges(res.path, calib, method="minmax", num_samples=len(x))
            for precision in ("fp32", "int8"):
                artifacts[f"{tag}_{precision}"] = backend.build(BuildRequest(onnx_path=res.path, precision=precision, out_dir=Path(tmp) / f"{tag}_{precision}", target=backend.default_target(), ranges=ranges if precision == "int8" else None))
        times: dict[str, list[float]] = {k: [] for k in artifacts}
        for art in artifacts.values():  # warm-up
            backend.benchmark(art, batch=shape[0], warmup=5, runs=5)
        for _ in range(rounds):
            for k, art in artifacts.items():
                times[k].append(backend.benchmark(art, batch=shape[0], warmup=2, runs=15).p50_ms)
        out["ms"] = {k: statistics.median(v) for k, v in times.items()}
    return out


def classifier_modules(model: torch.nn.Module, graph) -> list[torch.nn.Module]:  # noqa: ANN001
    names = {m["tensor"].rsplit(".", 1)[0] for g in graph.groups if "output" in g.reason for m in g.members if m["role"] == "out"}
    return [model.get_submodule(n) for n in names]


def run_torch_pruning(builder, shape: tuple[int, ...], ratio: float, graph) -> dict:  # noqa: ANN001
    import torch_pruning as tp

    model = builder().eval()
    x = torch.randn(*shape)
    try:
        with torch.no_grad():
            ref = model(x)
        ref_shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else ()
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                          ignored_layers=classifier_modules(model, graph))
        pruner.step()
        prof = profile_model(model, shape)
        if prof.output_shape != ref_shape and len(output_tensors(ref)) == 1:
            return {"ok": False, "error": f"output shape {prof.output_shape} != {ref_shape}"}
        return {"ok": True, "params": prof.params, "macs": prof.macs}
    except Exception as exc:  # report, do not stop the matrix
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}


def run_model(name: str, builder, shape: tuple[int, ...], ratios: list[float], with_tp: bool, deploy: dict | None) -> dict:  # noqa: ANN001
    row: dict = {"name": name, "shape": shape}
    try:
        model = builder().eval()
        t0 = time.perf_counter()
        graph = trace(model, shape)
        row["trace_s"] = time.perf_counter() - t0
        row["groups"] = len(graph.groups)
        row["prunable"] = len(graph.prunable_groups)
        row["inexact"] = sum(1 for g in graph.groups if g.prunable and not g.exact)
        base = profile_model(model, shape)
        row["params"], row["macs"] = base.params, base.macs
        scores = score_groups(model, graph, "l1")
        for r in ratios:
            pruned, _ = apply(model, graph, WidthPlan(keep=uniform_plan_keep(graph, r)), scores=scores)
            prof = profile_model(pruned, shape)
            eq = prune_equivalence(model, shape, r, seed=1, graph=graph)
            row[r] = {"params": prof.params, "macs": prof.macs, "eq_diff": eq.max_abs_diff, "eq_effect": eq.zeroing_effect}
            if with_tp:
                row[r]["tp"] = run_torch_pruning(builder, shape, r, graph)
            if r == max(ratios) and deploy is not None:
                try:
                    row["deploy"] = deploy_check(model, pruned, shape, **deploy)
                except Exception as exc:  # report, do not stop the matrix
                    row["deploy_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                    traceback.print_exc()
            del pruned
        row["locked"] = sorted({g.reason for g in graph.groups if not g.prunable and g.reason not in (
            "the network input", "a model output (classes, boxes, features) is never pruned")})
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    return row


def render(rows: list[dict], ratios: list[float], command: str, with_tp: bool, tp_version: str | None, tv_version: str | None) -> str:
    lines = [
        "# Pruning architecture matrix",
        "",
        f"Generated by `{command}` (torch {torch.__version__}" + (f", torchvision {tv_version}" if tv_version else "")
        + (f", torch-pruning {tp_version}" if tp_version else "") + "). Random-init models: `hadmc_deploy.models.matrix` "
        "(torchvision-style definitions, no torchvision needed) and, as `tv_*`, torchvision's own definitions built with "
        "`--arch torchvision:NAME` (random weights, random BN statistics).",
        "",
        "- **after r**: params / MACs after removing r of every prunable group's channels (L1 importance, `hadmc-deploy prune --ratio r`).",
        "- **equivalence**: zero-then-prune with random channel choices over the exactly prunable groups; max |output difference| "
        "over every output (pass < 1e-5) and, in brackets, how much the zeroing moved the output (so the check is not vacuous).",
        "- **ONNX**: `export_onnx` of the original / the pruned model (at the largest ratio), max |ORT - torch| over all outputs (pass: |ORT - torch| <= 1e-4 + 1e-3 |torch| for every element, export_onnx's own check, numpy.allclose); "
        "**outputs**: how many outputs the exported graph has.",
        "- **ms FP32 / INT8 / pruned FP32 / pruned INT8**: ONNX Runtime CPU backend, batch as in *input*, median of per-round medians, "
        "the four interleaved. INT8 ranges come from random inputs (speed only). The machine is shared by several jobs: timings are noisy "
        "(20-30%); the equivalence and ONNX columns are what this table checks.",
        "- **approx.** groups are prunable but not exactly (LayerNorm over channels): pruned in the product, left out of the equivalence check.",
        "",
    ]
    head = ["model", "input", "groups (prunable / approx.)", "params", "MACs"]
    for r in ratios:
        head += [f"after {r:.0%}", f"equivalence {r:.0%}"]
    head += ["ONNX orig / pruned", "outputs", "ms FP32 / INT8 / pruned FP32 / pruned INT8"]
    if with_tp:
        head += [f"Torch-Pruning {r:.0%}" for r in ratios]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for row in rows:
        shape = "x".join(map(str, row["shape"])) if row["shape"][0] > 1 else "x".join(map(str, row["shape"][1:]))
        if "error" in row and "params" not in row:
            lines.append(f"| {row['name']} | {shape} | FAILED: {row['error'][:120]} |" + " |" * (len(head) - 3))
            continue
        cells = [row["name"], shape, f"{row['groups']} ({row['prunable']} / {row['inexact']})", human(row["params"]), human(row["macs"])]
        for r in ratios:
            d = row.get(r)
            if d is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{human(d['params'])} / {human(d['macs'])}")
            ok = "pass" if d["eq_diff"] < 1e-5 and d["eq_effect"] > 1e-4 else "FAIL"
            cells.append(f"{ok} {d['eq_diff']:.1e} ({d['eq_effect']:.1e})")
        dep = row.get("deploy")
        if dep:
            # export_onnx's own check (numpy.allclose: |ORT - torch| <= 1e-4 + 1e-3 |torch| per element): random-BN
            # ResNet-50 logits reach ~4e2, where float32 sums differ by ~3e-4; a per-element ratio would fail on its near-zero logits
            ok = "pass" if dep.get("orig_onnx_passed", True) and dep.get("pruned_onnx_passed", True) else "FAIL"
            ms = dep["ms"]
            cells += [f"{ok} {dep['orig_onnx_err']:.1e} / {dep['pruned_onnx_err']:.1e}", str(dep["n_outputs"]),
                      " / ".join(f"{ms[k]:.2f}" for k in ("orig_fp32", "orig_int8", "pruned_fp32", "pruned_int8"))]
        else:
            cells += ["-", "-", row.get("deploy_error", "-")[:100].replace("|", "/")]
        if with_tp:
            for r in ratios:
                tp = row.get(r, {}).get("tp", {})
                cells.append(f"ok: {human(tp['params'])} / {human(tp['macs'])}" if tp.get("ok") else f"fails: {tp.get('error', '-')}".replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
        if row.get("locked"):
            notes.append(f"- **{row['name']}**: " + "; ".join(row["locked"]))
    if notes:
        lines += ["", "## Groups left unpruned (besides the network input and the model outputs), and why", ""] + notes
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "full"), default="full", help="input sizes: the tests' small ones or full size")
    parser.add_argument("--input-size", type=int, help="override H and W of every model whose input size is free (e.g. 96 to fit a small machine)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--models", nargs="*", help="subset of the matrix")
    parser.add_argument("--no-torch-pruning", action="store_true")
    parser.add_argument("--no-torchvision", action="store_true", help="leave out torchvision's own definitions")
    parser.add_argument("--no-deploy", action="store_true", help="skip export / INT8 / timing")
    parser.add_argument("--exporter", choices=("dynamo", "legacy", "both"), default="both", help="export_onnx exporters (both: dynamo, then legacy)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "prune_matrix.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    matrix = {**MATRIX, **SLOW_ONLY} if args.size == "full" else dict(MATRIX)
    if args.size == "full":
        matrix.pop("vgg11_bn_head512", None)
    tv_version = None
    if not args.no_torchvision:
        try:
            tv_version = importlib.metadata.version("torchvision")
            matrix.update(TORCHVISION)
        except importlib.metadata.PackageNotFoundError:
            print("torchvision is not installed: its models are left out (pip install torchvision==0.28.0 --no-deps)", file=sys.stderr)
    names = args.models or list(matrix)
    tp_version = None
    if not args.no_torch_pruning:
        try:
            import torch_pruning

            tp_version = getattr(torch_pruning, "__version__", "?")
        except ImportError:
            print("torch_pruning is not importable: the comparison columns are left out", file=sys.stderr)
    exporters = ("dynamo", "legacy") if args.exporter == "both" else (args.exporter,)
    deploy = None if args.no_deploy else {"exporters": exporters, "rounds": args.rounds}
    rows = []
    for name in names:
        builder, small, full = matrix[name]
        shape = full if args.size == "full" else small
        if args.input_size and small[2:] != full[2:]:  # the size is free (O-Net's is fixed by its Linear)
            shape = (*shape[:2], args.input_size, args.input_size)
        t0 = time.perf_counter()
        rows.append(run_model(name, builder, shape, args.ratios, tp_version is not None, deploy))
        print(f"{name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    command = "python tools/prune_matrix.py " + " ".join(sys.argv[1:])
    text = render(rows, args.ratios, command.strip(), tp_version is not None, tp_version, tv_version)
    from hadmc_deploy.fileio import write_text_atomic

    write_text_atomic(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
