"""Stage 7, export: verified ONNX of the original and of the final PyTorch model."""

from __future__ import annotations

from typing import Any

from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext, Stage, StageResult
from hadmc_deploy.build.inputs import baseline_export, dataset, final_torch_model, loaded_model
from hadmc_deploy.build.variants import pruned
from hadmc_deploy.errors import VerificationError
from hadmc_deploy.export import export_onnx, reverified
from hadmc_deploy.fileio import write_bytes_atomic

#: real samples the export is verified on in ONNX Runtime.
VERIFY_SAMPLES = 16


def run(ctx: BuildContext) -> StageResult:
    sample = dataset(ctx, "eval") or dataset(ctx, "calib")
    # the first of the data's fixed shuffle, the same images whichever number a build loaded: the
    # verification is recorded in the file, which later builds' reused work is keyed by (build/reuse.py)
    verify = sample.subset(VERIFY_SAMPLES).x if sample is not None else None
    jobs = [("baseline", loaded_model(ctx).model, ctx.path("baseline.onnx"))]
    if pruned(ctx):
        jobs.append(("pruned", final_torch_model(ctx), ctx.path("model.onnx")))
    result: dict[str, Any] = {}
    for name, model, path in jobs:
        res = None
        if name == "baseline":  # exported once per build (perhaps already, for the latency table)
            try:
                res = reverified(baseline_export(ctx), model, path, verify, ui=ctx.ui)
            except VerificationError as exc:
                # traced on random inputs, a model that branches on its data may have recorded the
                # branch real images do not take: exported again, traced on the real images
                ctx.ui.warn(f"the early export of the original disagrees with it on real images ({exc.one_line()}): exporting it again on them")
        if res is None:
            res = export_onnx(model, ctx.plan.input_shape, path, opset=ctx.plan.target.opset, dynamic_batch=True, verify_inputs=verify, ui=ctx.ui)
            if name == "baseline" and (key := ctx.lazy("export:baseline:key", lambda: None)):
                reuse.store_files("export", key, [path], res.to_dict())  # later builds take this one, not the one that disagreed
        result[name] = res.to_dict()
    if not pruned(ctx):
        # The final float model is the original: model.onnx names it for the backends' tools.
        write_bytes_atomic(ctx.path("model.onnx"), ctx.path("baseline.onnx").read_bytes())
    worst = max(r["max_abs_err"] for r in result.values())
    result["_summary"] = f"{len(jobs)} model(s) exported, verified in ONNX Runtime (max abs err {worst:.2e}, {'real' if verify is not None else 'random'} inputs)" + (
        "; the original's export from an earlier build" if result["baseline"].get("reused") else "")
    return StageResult(result, [p for _, _, p in jobs] + [ctx.path("model.onnx")])


STAGE = Stage("export", run, lambda c: {"opset": c.plan.target.opset, "input_shape": list(c.plan.input_shape)}, ("load", "recover"))
