"""Plain-data helpers of the TensorRT backend that need no GPU: profile shapes, metadata, compatibility,
the timing-cache location, and what a build directory holds for finishing the build on a GPU host.

Kept apart from the build and runtime code so all of it is tested on machines
without TensorRT, and so the pipeline can call the fallback helpers without
importing anything TensorRT-specific.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import ArtifactError, UsageError

ENGINE_FILE = "model.engine"
#: the portable artifacts of one model variant, by role: the pruned model first, then the
#: unpruned baseline (the names `hadmc-deploy build` writes). Roles of one variant go together
#: so a pruned float graph is never paired with the baseline's QDQ graph.
VARIANT_FILES = (
    {"float_onnx": "model.onnx", "qdq_onnx": "qdq_s8s8.onnx", "scales": "scales.json", "calibration_cache": "calibration.cache"},
    {"float_onnx": "baseline.onnx", "qdq_onnx": "baseline_qdq_s8s8.onnx", "scales": "baseline_scales.json", "calibration_cache": "baseline_calibration.cache"},
)
SHARED_FILES = {"plan": ("build_plan.json", "plan.json")}
#: where in a build directory they may sit (the top, or one stage folder below it).
_SUBDIRS = ("", "onnx", "export", "calibration", "int8", "quant")


# -- optimization profile ---------------------------------------------------------
def parse_batch_triple(text: str) -> tuple[int, int, int]:
    """`--batch MIN,OPT,MAX` (or a single N for a fixed batch)."""
    try:
        parts = [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError as exc:
        raise UsageError(f"--batch {text!r} is not integers", hint="e.g. --batch 1,8,32") from exc
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise UsageError(f"--batch {text!r} needs MIN,OPT,MAX", hint="e.g. --batch 1,8,32")
    return _check_triple(tuple(parts))  # type: ignore[arg-type]


def _check_triple(triple: tuple[int, int, int]) -> tuple[int, int, int]:
    lo, opt, hi = triple
    if lo < 1 or not lo <= opt <= hi:
        raise UsageError(f"batch sizes {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")
    return triple


def batch_triple_from_sizes(batch_sizes: tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    """MIN,OPT,MAX from a target's batch sizes: the extremes, and the middle one as the tuning point.

    Why the middle size: TensorRT tunes kernels for OPT; the target's list is
    (latency batch, typical batch, throughput batch), so the middle is the size served most.
    """
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UsageError(f"target batch sizes {list(batch_sizes)} must be positive integers")
    return sizes[0], sizes[len(sizes) // 2], sizes[-1]


def derive_profile(
    input_shapes: dict[str, list[int | str | None]],
    batch: tuple[int, int, int],
) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shape per input: the batch axis from `batch`, every other axis from the ONNX graph.

    `input_shapes` holds each ONNX input's dims, a dim being an int or a symbol/None when
    dynamic. Only the leading (batch) axis may be dynamic: a dynamic H or W has no
    sizes we could choose for the user. A graph with a fixed batch gets that batch.
    """
    _check_triple(batch)
    profile: dict[str, dict[str, list[int]]] = {}
    for name, dims in input_shapes.items():
        if not dims:
            raise UsageError(f"ONNX input {name!r} is a scalar; the engine needs a batch axis")
        rest = dims[1:]
        dynamic_rest = [i + 1 for i, d in enumerate(rest) if not isinstance(d, int) or d < 1]
        if dynamic_rest:
            raise UsageError(
                f"ONNX input {name!r} has dynamic axes {dynamic_rest} besides the batch",
                hint="export with a fixed input shape (--input-shape N,C,H,W); only the batch axis may be dynamic",
            )
        lead = dims[0]
        if isinstance(lead, int) and lead >= 1:
            shapes = [[lead, *rest]] * 3
        else:
            shapes = [[b, *rest] for b in batch]
        profile[name] = {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}
    return profile


def profile_shapes(profile: dict[str, dict[str, list[int]]], batch: int) -> dict[str, tuple[int, ...]]:
    """Each input's shape at `batch` (the other axes from the profile's OPT); refused outside MIN..MAX."""
    shapes = {}
    for name, p in profile.items():
        lo, hi = p["min"][0], p["max"][0]
        if not lo <= batch <= hi:
            raise UsageError(f"batch {batch} is outside the engine's profile {lo}..{hi} for input {name!r}",
                             hint="rebuild with --batch MIN,OPT,MAX covering it")
        shapes[name] = (batch, *p["opt"][1:])
    return shapes


def onnx_input_shapes(onnx_path: str | Path) -> dict[str, list[int | str | None]]:
    """Each graph input's dims (int, or the symbol / None of a dynamic axis); initializers excluded."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out: dict[str, list[int | str | None]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims: list[int | str | None] = []
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        out[value.name] = dims
    return out


def onnx_has_qdq(onnx_path: str | Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


# -- timing cache ------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "unknown"


def timing_cache_path(gpu_name: str, trt_version: str, cache_dir: str | Path | None = None) -> Path:
    """One persistent timing cache per GPU model and TensorRT version (timings are valid nowhere else).

    `$HADMC_CACHE_DIR` (or `$XDG_CACHE_HOME/hadmc-deploy`, default ~/.cache/hadmc-deploy) holds it.
    """
    if cache_dir is None:
        env = os.environ.get("HADMC_CACHE_DIR")
        base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hadmc-deploy"
    else:
        base = Path(cache_dir)
    return base / f"trt-timing-{_slug(gpu_name)}-{_slug(trt_version)}.cache"


# -- metadata and compatibility -------------------------------------------------------
def engine_metadata(
    *,
    trt_version: str,
    device: dict[str, Any],
    plan: dict[str, Any],
    profile: dict[str, dict[str, list[int]]],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    onnx_path: Path,
    onnx_sha256: str,
    calibration: dict[str, Any] | None,
    build_seconds: float,
    features: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata.json of an engine artifact (what the runtime checks before it deserializes)."""
    return {
        "backend": "tensorrt",
        "format": "hadmc-trt-engine/1",
        "tensorrt_version": trt_version,
        "gpu_name": device.get("gpu_name"),
        "compute_capability": device.get("compute_capability"),
        "device": device,
        "precision": plan.get("precision"),
        "precision_path": plan.get("path"),
        "precision_plan": plan,
        "hardware_compatibility": (extra or {}).get("hardware_compatibility", "none"),
        "profile": profile,
        "inputs": inputs,
        "outputs": outputs,
        "input_names": [t["name"] for t in inputs],
        "output_names": [t["name"] for t in outputs],
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256},
        "calibration": calibration,
        "build_seconds": round(build_seconds, 3),
        "tensorrt_features": features,
        **{k: v for k, v in (extra or {}).items() if k != "hardware_compatibility"},
    }


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def compatibility_problem(metadata: dict[str, Any], here: dict[str, Any]) -> str | None:
    """Why an engine built as `metadata` says cannot run on the device `here` describes, or None.

    A serialized engine holds kernels chosen for one GPU model and one TensorRT
    build: TensorRT refuses other versions (or crashes on other GPUs) deep in
    deserialization, so we refuse first with the reason. Engines built with a
    hardware-compatibility level (Ampere+) may move between GPUs of compute capability >= 8.0.
    """
    built_ver = str(metadata.get("tensorrt_version", ""))
    here_ver = str(here.get("tensorrt_version", ""))
    if not built_ver:
        return "its metadata.json does not record the TensorRT version that built it"
    if _major_minor(built_ver) != _major_minor(here_ver):
        return f"it was built with TensorRT {built_ver} and this host has TensorRT {here_ver or 'none'}"
    built_cc = str(metadata.get("compute_capability", ""))
    here_cc = str(here.get("compute_capability", ""))
    compat = str(metadata.get("hardware_compatibility", "none")).lower()
    if compat not in ("none", "", "false"):
        try:
            ok = float(here_cc) >= 8.0
        except ValueError:
            ok = False
        if not ok:
            return f"it was built hardware-compatible ({compat}) for compute capability >= 8.0 and this GPU is {here_cc or 'unknown'}"
        return None
    built_gpu = str(metadata.get("gpu_name", ""))
    here_gpu = str(here.get("gpu_name", ""))
    if built_cc and here_cc and built_cc != here_cc:
        return f"it was built for {built_gpu} (compute capability {built_cc}) and this GPU is {here_gpu} (compute capability {here_cc})"
    if built_gpu and here_gpu and _slug(built_gpu) != _slug(here_gpu):
        return f"it was built for a {built_gpu} and this GPU is a {here_gpu}"
    return None


def check_compatible(metadata: dict[str, Any], here: dict[str, Any], where: str | Path) -> None:
    problem = compatibility_problem(metadata, here)
    if problem is not None:
        raise ArtifactError(
            f"engine {where} cannot be loaded here: {problem}",
            hint="an engine is valid only on the GPU model and TensorRT version that built it; rebuild it on this host with `hadmc-deploy engine`",
        )


# -- portable artifacts and the fallback message ------------------------------------
def portable_artifacts(build_dir: str | Path) -> dict[str, Path]:
    """The files a CPU-side build left for the GPU host, by role (only those that exist).

    Roles: float_onnx, qdq_onnx, scales (of the pruned model if there is one, else the
    baseline), calibration_cache, plan.
    """
    build_dir = Path(build_dir)
    found: dict[str, Path] = {}
    variants = []
    for variant in VARIANT_FILES:
        hits = {}
        for role, name in variant.items():
            hit = next((build_dir / sub / name for sub in _SUBDIRS if (build_dir / sub / name).is_file()), None)
            if hit is not None:
                hits[role] = hit
        variants.append(hits)
    # the first variant with a float graph and its QDQ graph (a build that pruned nothing writes model.onnx,
    # the baseline's copy, but only baseline_qdq_s8s8.onnx); else the first with a float graph; else with a QDQ graph
    chosen = (next((v for v in variants if "float_onnx" in v and "qdq_onnx" in v), None) or next((v for v in variants if "float_onnx" in v), None)
              or next((v for v in variants if "qdq_onnx" in v), {}))
    found.update(chosen)
    for role, names in SHARED_FILES.items():
        for sub in _SUBDIRS:
            hit = next((build_dir / sub / n for n in names if (build_dir / sub / n).is_file()), None)
            if hit is not None:
                found[role] = hit
                break
    return found


def sibling_qdq(onnx_path: str | Path, role: str = "qdq_onnx") -> Path:
    """Where the INT8 stage puts the QDQ graph of this float graph (beside it, by the variant's name);
    with role "calibration_cache", its TensorRT calibration cache (baseline.onnx's is
    baseline_calibration.cache: the pruned model's calibration.cache holds other tensors' scales)."""
    name = next((v[role] for v in VARIANT_FILES if v["float_onnx"] == Path(onnx_path).name), VARIANT_FILES[0][role])
    return Path(onnx_path).parent / name


def engine_command(build_dir: Path, target_name: str, precision: str) -> str:
    """The command that builds the engine on the GPU host from a build directory's portable artifacts."""
    return f"hadmc-deploy engine {build_dir} --precision {precision} --target {target_name} -o {build_dir / 'engine'}"


def fallback_message(build_dir: str | Path, target: Any, reason: str, *, precision: str | None = None) -> str:
    """What to tell the user when the engine cannot be built here: why, what exists, the exact command."""
    build_dir = Path(build_dir)
    target_name = getattr(target, "name", str(target))
    precision = precision or getattr(target, "default_precision", "int8")
    have = portable_artifacts(build_dir)
    listed = ", ".join(str(p.relative_to(build_dir)) if p.is_relative_to(build_dir) else str(p) for p in have.values()) or "none yet"
    device = getattr(target, "description", target_name)
    command = engine_command(build_dir, target_name, precision)
    return (
        f"The TensorRT engine for target {target_name!r} was not built here ({reason}). "
        f"Portable artifacts in {build_dir}: {listed}. "
        f"An engine is valid only on the GPU model and TensorRT version that build it, so copy {build_dir} to the "
        f"{device} host and run there: {command}"
    )
