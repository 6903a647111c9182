"""The INT8 check against FP32 on held-out calibration images, where it is the accuracy guard (an
INT8 classifier built without labelled --eval data): the quantize stage's options, the float
model's reference outputs (computed once per model) and the check of a further QDQ graph, which
the decide stage runs on a mixed INT8/FP32 graph only when that graph could deploy.

One module because the quantize and decide stages both check against the same reference, and the
decide stage may not import a stage that imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hadmc_deploy.build import reuse
from hadmc_deploy.build.engine import BuildContext
from hadmc_deploy.build.inputs import dataset, int8_guarding, macs_per_image
from hadmc_deploy.build.sample_budget import verify_samples
from hadmc_deploy.build.variants import float_onnx
from hadmc_deploy.calibration.guard import GuardSettings
from hadmc_deploy.calibration.qdq import cpu_reduce_range
from hadmc_deploy.calibration.quantize import Int8Options, heldout_samples
from hadmc_deploy.calibration.verify_qdq import QdqCheck, compare_outputs, judge, ort_session, run_all_outputs
from hadmc_deploy.targets import detect_cpu_isa

#: eval samples the guard's repair measures each candidate on; the final accuracy uses all of --eval.
GUARD_SAMPLES = 2000


def int8_options(ctx: BuildContext) -> Int8Options:
    """The build's INT8 options: the target's form, the guard (on --eval accuracy, or without labels
    on FP32's outputs for held-out calibration images), and how many images the check compares."""
    q, target = ctx.settings.quantization, ctx.plan.target
    guard = None
    if not q.allow_accuracy_drop:
        # without labelled data (or for a detector, whose accuracy is not top-1) the guard
        # compares INT8 with FP32 outputs on held-out calibration samples instead
        guard = GuardSettings(max_accuracy_drop=q.max_accuracy_drop if q.max_accuracy_drop is not None else 1.0, eval_samples=GUARD_SAMPLES)
    return Int8Options(
        method=q.calib_method, samples=ctx.settings.data.calib_samples, form=target.int8_form,
        verify_samples=verify_samples(macs_per_image(ctx), guarding=int8_guarding(ctx)),
        reduce_range=target.backend == "onnxruntime" and cpu_reduce_range(detect_cpu_isa()), guard=guard,
    )


def heldout_images(ctx: BuildContext, opts: Int8Options) -> tuple[np.ndarray, str]:
    """(the INT8 check's held-out calibration images, their SHA-256), once per build: the float
    reference, the reused INT8 graph's key and the mixed graph's check all read them (473 images
    at 224 are 285 MB to gather and hash)."""

    def gather() -> tuple[np.ndarray, str]:
        x, _ = heldout_samples(dataset(ctx, "calib"), opts.samples, opts.verify_samples)
        return x, reuse.array_sha256(x)

    return ctx.lazy(f"int8-heldout:{opts.samples}:{opts.verify_samples}", gather)


def heldout_reference(ctx: BuildContext, model: str, opts: Int8Options) -> list[np.ndarray]:
    """The float model's outputs on the INT8 check's held-out samples, computed once for the guard
    and the mixed graph's check (a ResNet-18 at 224 spent 10 s per pass over 473 of them)."""

    def run() -> list[np.ndarray]:
        heldout_x, images = heldout_images(ctx, opts)
        onnx_path = float_onnx(ctx, model)

        def outputs(into: Path) -> None:
            reuse.save_arrays(run_all_outputs(ort_session(onnx_path), heldout_x), into)

        if not ctx.cache.enabled:
            return run_all_outputs(ort_session(onnx_path), heldout_x)
        # the same graph on the same images: outputs an earlier build computed
        return reuse.reused("heldout", reuse.file_key("heldout", onnx_path, images=images), outputs, reuse.load_arrays, ".npz")[0]

    return ctx.lazy(f"int8-reference:{model}:{opts.samples}:{opts.verify_samples}", run)


def check_against_float(ctx: BuildContext, model: str, qdq_path: str | Path, opts: Int8Options) -> QdqCheck:
    """A QDQ graph of `model` against its float outputs on the held-out images, judged on the guard's
    bound. Why a graph with more layers in float is checked on its own: closer to FP32 is likely,
    not guaranteed, and without labels nothing else vouches for it."""
    assert opts.guard is not None, "the held-out check is the guard only when the guard is on"
    heldout_x, _ = heldout_images(ctx, opts)
    session = ort_session(qdq_path)
    outputs = run_all_outputs(session, heldout_x)
    return judge(compare_outputs(heldout_reference(ctx, model, opts), outputs, [o.name for o in session.get_outputs()]),
                 max_loss=opts.guard.max_accuracy_drop / 100.0)
