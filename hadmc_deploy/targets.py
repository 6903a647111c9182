"""Hardware target profiles: which backend builds the artifact, what the chip likes.

A `TargetProfile` is plain data. Built-in profiles cover the T4 (TensorRT), the
host CPU (ONNX Runtime, ISA detected at run time) and a generic CUDA GPU; users
add their own in a TOML file (`--targets-file` or `$HADMC_TARGETS`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class Datasheet:
    """Peak numbers for the analytic (roofline) latency fallback. Units: TFLOP/s, GB/s, microseconds."""

    peak_tflops: dict[str, float]
    memory_gbps: float
    launch_overhead_us: float
    source: str


@dataclass(frozen=True)
class TargetProfile:
    name: str
    backend: str
    description: str
    precisions: tuple[str, ...]
    default_precision: str
    #: preferred channel multiple per precision (tensor cores, SIMD width).
    round_to: dict[str, int]
    batch_sizes: tuple[int, ...]
    datasheet: Datasheet
    #: the ISA family for CPU targets ("avx2", "avx512_vnni", "arm64", ...), decides the INT8 form.
    isa: str | None = None
    #: the INT8 graph form the backend runs fastest: "qdq_s8s8" (TensorRT) or "qdq_u8s8" (ORT on AVX2).
    int8_form: str = "qdq_s8s8"
    opset: int = 18
    lut_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def alignment(self, precision: str | None = None) -> int:
        return self.round_to.get(precision or self.default_precision, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_cpu_isa() -> str:
    """The SIMD family ONNX Runtime's int8 kernels dispatch on."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "avx512_vnni" if "avx512_vnni" in flags else "avx_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "generic"


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _int8_form_for_isa(isa: str) -> str:
    # Measured by tools/bench_int8.py (docs/int8.md) on AVX-512 VNNI with ORT 1.32: U8S8
    # ran ResNet-18 2.25x over FP32, S8S8 1.14x and slower than FP32 on small models; the
    # team measured U8S8 1.65x and S8S8 below FP32 on AVX2. ARM's dot-product kernels take
    # S8S8 natively (ORT's guidance; not measured here).
    if isa == "arm64":
        return "qdq_s8s8"
    return "qdq_u8s8"


T4 = TargetProfile(
    name="t4",
    backend="tensorrt",
    description="NVIDIA T4 (Turing, sm_75) with TensorRT",
    precisions=("int8", "fp16", "fp32"),
    default_precision="int8",
    # INT8 tensor cores want channel multiples of 32, FP16 of 8.
    round_to={"int8": 32, "fp16": 8, "fp32": 8},
    batch_sizes=(1, 8, 32),
    datasheet=Datasheet(
        peak_tflops={"int8": 130.0, "fp16": 65.0, "fp32": 8.1},
        memory_gbps=320.0,
        launch_overhead_us=5.0,
        source="NVIDIA T4 datasheet: 8.1 TFLOPS FP32, 65 TFLOPS FP16, 130 TOPS INT8, 320 GB/s",
    ),
    int8_form="qdq_s8s8",
    opset=18,
    extra={"compute_capability": "7.5"},
)

CUDA = TargetProfile(
    name="cuda",
    backend="tensorrt",
    description="Any NVIDIA GPU with TensorRT (device measured at build time)",
    precisions=("int8", "fp16", "fp32"),
    default_precision="fp16",
    round_to={"int8": 32, "fp16": 8, "fp32": 4},
    batch_sizes=(1, 8, 32),
    datasheet=Datasheet(
        peak_tflops={"int8": 100.0, "fp16": 50.0, "fp32": 10.0},
        memory_gbps=500.0,
        launch_overhead_us=5.0,
        source="generic mid-range GPU guess; measure a LUT for real numbers",
    ),
    int8_form="qdq_s8s8",
)


def cpu_profile(isa: str | None = None) -> TargetProfile:
    """The host CPU under ONNX Runtime; its INT8 form follows the detected ISA."""
    isa = isa or detect_cpu_isa()
    cores = os.cpu_count() or 1
    # Rough per-core peaks: 2 FMA units x 8 fp32 lanes x 2 flops x ~3 GHz for AVX2;
    # int8 via vpmaddubsw roughly 4x that. Only used where no LUT exists.
    per_core_fp32 = {"avx512_vnni": 0.19, "avx512": 0.19, "avx_vnni": 0.096}.get(isa, 0.096)
    int8_factor = 4.0 if "vnni" in isa else 2.0
    return TargetProfile(
        name="cpu",
        backend="onnxruntime",
        description=f"this machine's CPU ({isa}, {cores} cores) with ONNX Runtime",
        precisions=("int8", "fp32"),
        default_precision="int8",
        round_to={"int8": 8, "fp32": 8},
        batch_sizes=(1, 8, 32),
        datasheet=Datasheet(
            peak_tflops={"fp32": per_core_fp32 * cores, "int8": per_core_fp32 * cores * int8_factor},
            memory_gbps=20.0,
            launch_overhead_us=10.0,
            source=f"estimated from the ISA ({isa}) and {cores} cores; measure a LUT for real numbers",
        ),
        isa=isa,
        int8_form=_int8_form_for_isa(isa),
    )


def builtin_targets() -> dict[str, TargetProfile]:
    return {"t4": T4, "cpu": cpu_profile(), "cuda": CUDA}


def _profile_from_toml(name: str, table: dict[str, Any], base: dict[str, TargetProfile]) -> TargetProfile:
    parent_name = table.get("inherits")
    if parent_name is not None:
        if parent_name not in base:
            raise UsageError(f"target {name!r} inherits unknown target {parent_name!r}")
        parent = base[parent_name]
    else:
        parent = CUDA if table.get("backend", "tensorrt") == "tensorrt" else cpu_profile()
    sheet = parent.datasheet
    if "datasheet" in table:
        d = table["datasheet"]
        sheet = Datasheet(
            peak_tflops={**sheet.peak_tflops, **d.get("peak_tflops", {})},
            memory_gbps=float(d.get("memory_gbps", sheet.memory_gbps)),
            launch_overhead_us=float(d.get("launch_overhead_us", sheet.launch_overhead_us)),
            source=str(d.get("source", f"user target file for {name}")),
        )
    changes: dict[str, Any] = {"name": name, "datasheet": sheet}
    for key in ("backend", "description", "default_precision", "isa", "int8_form", "lut_path"):
        if key in table:
            changes[key] = str(table[key])
    if "opset" in table:
        changes["opset"] = int(table["opset"])
    if "precisions" in table:
        changes["precisions"] = tuple(table["precisions"])
    if "batch_sizes" in table:
        changes["batch_sizes"] = tuple(int(b) for b in table["batch_sizes"])
    if "round_to" in table:
        changes["round_to"] = {**parent.round_to, **{k: int(v) for k, v in table["round_to"].items()}}
    return replace(parent, **changes)


def load_targets_file(path: str | Path) -> dict[str, TargetProfile]:
    """User targets: `[targets.NAME]` tables with the profile's fields (see README)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UsageError(f"targets file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"targets file {path} is not valid TOML: {exc}") from exc
    tables = data.get("targets", {})
    if not isinstance(tables, dict) or not tables:
        raise UsageError(f"targets file {path} has no [targets.NAME] tables")
    base = builtin_targets()
    out: dict[str, TargetProfile] = {}
    for name, table in tables.items():
        out[name] = _profile_from_toml(name, table, {**base, **out})
    return out


def all_targets(targets_file: str | Path | None = None) -> dict[str, TargetProfile]:
    targets = builtin_targets()
    targets_file = targets_file or os.environ.get("HADMC_TARGETS")
    if targets_file:
        targets.update(load_targets_file(targets_file))
    return targets


def get_target(name: str, targets_file: str | Path | None = None) -> TargetProfile:
    targets = all_targets(targets_file)
    if name not in targets:
        raise UsageError(f"unknown target {name!r}", hint=f"choose one of {', '.join(sorted(targets))} (see `hadmc-deploy targets`)")
    return targets[name]
