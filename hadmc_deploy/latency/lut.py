"""The latency lookup table (LUT): a versioned JSON file of measured layer latencies.

A LUT is only meaningful on the device it was measured on, so the file carries
the target, the backend and its version, and a device fingerprint; loading it
elsewhere refuses (or, with `force`, warns loudly). Writes are atomic, so an
interrupted measurement leaves either the previous file or the new one, never
half of one.

Longer than most modules on purpose: every dataclass of the file format (entries,
staircase, context and whole-model corrections, meta) lives here, so the schema
is read and versioned in one place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.fileio import write_json_atomic
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.ui import UI, quiet_ui

FORMAT = "hadmc-latency-lut"
SCHEMA_VERSION = 2
#: older schemas this version still reads (new fields default to "not measured").
READABLE_SCHEMAS = (1, 2)

#: device-fingerprint keys that describe the machine's identity. Other keys a
#: backend reports (free memory, load) may differ between runs on the same device.
IDENTITY_KEYS = (
    "kind", "name", "cpu_model", "isa", "isa_flags", "machine", "logical_cpus", "cores", "threads",
    "gpu_name", "gpu", "compute_capability", "execution_provider",
)

_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_fingerprint() -> dict[str, Any]:
    """The host CPU's identity, for backends whose `describe_device` is not available."""
    from hadmc_deploy.targets import cpu_model_name, detect_cpu_isa

    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "kind": "cpu",
        "cpu_model": cpu_model_name(),
        "isa": detect_cpu_isa(),
        "isa_flags": sorted(f for f in _ISA_FLAGS if f in flags),
        "cores": os.cpu_count() or 1,
    }


#: the per-entry statistics a table can predict with (`LutMeta.method["statistic"]`):
#: the median of all timed runs, the fastest run, or the minimum over interleaved passes of
#: each pass's median ("mom": load from other processes only ever adds time, and a whole
#: pass is rarely hit throughout, so it is the most repeatable on a shared machine).
STATISTICS = ("median", "min", "mom")
#: what an entry is for: a grid point the predictor interpolates between, a point just off
#: the alignment grid (prices the unaligned penalty of its family), or a staircase-probe point.
ROLES = ("grid", "off_grid", "sweep")


@dataclass
class LutEntry:
    """One measured layer: its spec, median, p90 and fastest latency (ms), and the timed runs.

    `mom_ms` is the minimum of per-pass medians over `passes` interleaved passes and
    `spread` their relative range ((max - min) / min): the entry's measured noise.
    """

    spec: LayerSpec
    median_ms: float
    p90_ms: float
    runs: int
    min_ms: float | None = None
    mom_ms: float | None = None
    spread: float | None = None
    role: str = "grid"

    def value(self, statistic: str) -> float:
        if statistic == "min" and self.min_ms is not None:
            return self.min_ms
        if statistic == "mom" and self.mom_ms is not None:
            return self.mom_ms
        return self.median_ms

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"spec": self.spec.to_dict(), "median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs}
        for name in ("min_ms", "mom_ms", "spread"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        if self.role != "grid":
            data["role"] = self.role
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LutEntry:
        def opt(name: str) -> float | None:
            return None if data.get(name) is None else float(data[name])

        role = str(data.get("role", "grid"))
        if role not in ROLES:
            raise ValueError(f"unknown entry role {role!r}")
        return cls(
            spec=LayerSpec.from_dict(data["spec"]),
            median_ms=float(data["median_ms"]),
            p90_ms=float(data["p90_ms"]),
            runs=int(data["runs"]),
            min_ms=opt("min_ms"),
            mom_ms=opt("mom_ms"),
            spread=opt("spread"),
            role=role,
        )


@dataclass
class Staircase:
    """The measured channel staircase of this backend at the table's precision.

    `step`: channel counts that are multiples of it run the fast (blocked) kernels;
    `penalty`: median of t(unaligned count) / (t interpolated between the aligned
    neighbours), from a unit-step sweep of one representative layer per op kind
    (`per_op`: op -> {"step", "penalty", "layer", "axis"}). Measured, not assumed:
    it is 16 on AVX-512 ONNX Runtime FP32 here, 8 on AVX2, and may differ for INT8.
    """

    step: int
    penalty: float
    per_op: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: "pad": an unaligned count costs penalty x its padded count; "line": penalty x the line
    #: between its aligned neighbours (it leaves the blocked kernel).
    mode: str = "line"

    def for_op(self, op: str) -> tuple[int, float, str]:
        got = self.per_op.get(op)
        if got:
            return int(got["step"]), float(got["penalty"]), str(got.get("mode", "line"))
        return self.step, self.penalty, self.mode

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "penalty": self.penalty, "mode": self.mode, "per_op": self.per_op}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Staircase:
        return cls(int(data["step"]), float(data["penalty"]), dict(data.get("per_op", {})), str(data.get("mode", "line")))


#: an off-grid plan measured this much slower than its aligned-regime prediction means the
#: step pays in context (10%: beyond the whole-model noise of a quiet machine).
CONTEXT_STEP_PENALTY = 1.10


@dataclass
class ContextCorrection:
    """Per-layer factors from profiling whole deployed graphs (see latency/context.py).

    layer i of the graph costs its profiled in-context time interpolated over its size,
    factors[i][regime + "_ms_curve"] (points [MACs fraction of full width, ms]; see
    predictor.interp_context_ms), or, for a grouped conv where the fit kept one (measured-v13),
    its channel form factors[i][regime + "_form"] (coefficients [a, b, c, d] of
    latency/channel_form.py); tables from before measured-v10 have only factors: factor *
    (its table price), the factor read off factors[i][regime + "_curve"] (points [MACs
    fraction, factor], interpolated) or, in older tables, factors[i][regime]; regime
    "aligned" (every channel count of the layer a multiple of `step` or at full
    width) or "unaligned"; non-weighted layers have factor 0 because the profile
    charges their kernels (fused adds, pools, reorders, Q/DQ) to the weighted
    neighbours. `signature` (the layers' shape keys) ties it to one graph.
    """

    signature: list[str]
    factors: list[dict[str, Any]]
    overhead_ms: float
    step: int
    fitted_on: list[dict[str, Any]] = field(default_factory=list)
    #: measured / predicted-as-if-aligned for the off-grid plans (median): what leaving `step`
    #: costs in the deployed chain; None when no off-grid plan was profiled.
    unaligned_penalty: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature, "factors": self.factors, "overhead_ms": self.overhead_ms, "step": self.step,
            "fitted_on": self.fitted_on, "unaligned_penalty": self.unaligned_penalty,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextCorrection:
        penalty = data.get("unaligned_penalty")
        return cls(
            list(data["signature"]), [dict(f) for f in data["factors"]], float(data["overhead_ms"]), int(data["step"]),
            list(data.get("fitted_on", [])), None if penalty is None else float(penalty),
        )

    def step_pays(self) -> bool:
        """Whether unaligned widths measurably cost more in context (> CONTEXT_STEP_PENALTY)."""
        return self.step > 1 and self.unaligned_penalty is not None and self.unaligned_penalty > CONTEXT_STEP_PENALTY


@dataclass
class LutMeta:
    """Where and how a table was measured."""

    target: str
    backend: str
    backend_version: str
    device: dict[str, Any]
    threads: int | None
    batch: int
    precision: str
    #: channel alignment of the target at this precision: the step of the latency staircase.
    alignment: int
    #: warm-up runs, timed runs, and the statistic predictions use: "median" of the timed
    #: runs, or "min" (the fastest run: robust where other processes share the CPU, since
    #: load only ever adds time; whole-model timings must then use min too).
    method: dict[str, Any] = field(default_factory=lambda: {"warmup": 10, "runs": 30, "statistic": "median"})
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    int8_form: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "device": self.device,
            "threads": self.threads,
            "batch": self.batch,
            "precision": self.precision,
            "alignment": self.alignment,
            "method": self.method,
            "created": self.created,
            "int8_form": self.int8_form,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LutMeta:
        return cls(
            target=str(data["target"]),
            backend=str(data["backend"]),
            backend_version=str(data["backend_version"]),
            device=dict(data["device"]),
            threads=None if data.get("threads") is None else int(data["threads"]),
            batch=int(data["batch"]),
            precision=str(data["precision"]),
            alignment=int(data.get("alignment", 1)),
            method=dict(data.get("method", {})),
            created=str(data.get("created", "")),
            int8_form=data.get("int8_form"),
        )


@dataclass
class Correction:
    """measured_total ~= scale * sum(layer latencies) + offset_ms, fitted on whole-model runs.

    It absorbs what per-layer timing cannot see: cross-layer fusion and layout
    propagation in the whole graph, and the session's fixed per-run overhead.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    fitted_on: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, layer_sum_ms: float) -> float:
        return self.scale * layer_sum_ms + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "offset_ms": self.offset_ms, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        return cls(float(data.get("scale", 1.0)), float(data.get("offset_ms", 0.0)), list(data.get("fitted_on", [])))


@dataclass
class LatencyTable:
    """A LUT in memory: metadata, entries by spec key, and an optional whole-model correction."""

    meta: LutMeta
    entries: dict[str, LutEntry] = field(default_factory=dict)
    correction: Correction | None = None
    staircase: Staircase | None = None
    context: ContextCorrection | None = None
    #: measured builds fed back by the self-check (`LutLatencyModel.corrected_with`), applied last.
    feedback: Correction | None = None

    def alignment(self, precision: str | None = None) -> int:
        """The channel step to round plans to: measured on this machine when the table has a
        staircase (or the context's step, where the profiled deployed graphs show that leaving it
        costs and the isolated probe found no step or another one), else the target's assumed
        alignment."""
        if precision is not None and precision != self.meta.precision:
            raise LatencyModelError(f"this table holds {self.meta.precision} latencies, not {precision}", hint=f"measure a {precision} table")
        step = self.staircase.step if self.staircase is not None else max(int(self.meta.alignment), 1)
        if self.context is not None and self.context.step != step and self.context.step_pays():
            return self.context.step  # the deployed chain pays for its step, not the probe's
        return step

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, spec: LayerSpec) -> bool:
        return spec.key() in self.entries

    def get(self, spec: LayerSpec) -> LutEntry | None:
        return self.entries.get(spec.key())

    @property
    def statistic(self) -> str:
        stat = str(self.meta.method.get("statistic", "median"))
        return stat if stat in STATISTICS else "median"

    def value(self, entry: LutEntry) -> float:
        """The entry's latency under this table's statistic."""
        return entry.value(self.statistic)

    def add(
        self,
        spec: LayerSpec,
        median_ms: float,
        p90_ms: float,
        runs: int,
        min_ms: float | None = None,
        *,
        mom_ms: float | None = None,
        spread: float | None = None,
        role: str = "grid",
    ) -> None:
        def opt(v: float | None) -> float | None:
            return None if v is None else float(v)

        self.entries[spec.key()] = LutEntry(spec, float(median_ms), float(p90_ms), int(runs), opt(min_ms), opt(mom_ms), opt(spread), role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "meta": self.meta.to_dict(),
            "correction": None if self.correction is None else self.correction.to_dict(),
            "staircase": None if self.staircase is None else self.staircase.to_dict(),
            "context": None if self.context is None else self.context.to_dict(),
            "feedback": None if self.feedback is None else self.feedback.to_dict(),
            "entries": {key: entry.to_dict() for key, entry in sorted(self.entries.items())},
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "<memory>") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyModelError(f"{source} is not a hadmc-deploy latency table", hint="measure one with `hadmc-deploy lut`")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise LatencyModelError(
                f"{source} has LUT schema version {version}, this hadmc-deploy reads version {SCHEMA_VERSION}",
                hint="re-measure it with `hadmc-deploy lut`",
            )
        try:
            meta = LutMeta.from_dict(data["meta"])
            entries = {}
            for key, raw in data.get("entries", {}).items():
                entry = LutEntry.from_dict(raw)
                if entry.spec.key() != key:
                    raise ValueError(f"entry {key!r} holds a spec whose key is {entry.spec.key()!r}")
                if not entry.median_ms > 0:
                    raise ValueError(f"entry {key!r} has a non-positive latency {entry.median_ms}")
                entries[key] = entry
            correction = None if data.get("correction") is None else Correction.from_dict(data["correction"])
            staircase = None if data.get("staircase") is None else Staircase.from_dict(data["staircase"])
            context = None if data.get("context") is None else ContextCorrection.from_dict(data["context"])
            feedback = None if data.get("feedback") is None else Correction.from_dict(data["feedback"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LatencyModelError(f"{source} is corrupt: {type(exc).__name__}: {exc}", hint="delete it and re-measure with `hadmc-deploy lut`") from exc
        return cls(meta=meta, entries=entries, correction=correction, staircase=staircase, context=context, feedback=feedback)


def read_table(path: str | Path) -> LatencyTable:
    """Parse a LUT file; a missing, empty or corrupt file raises `LatencyModelError` with the fix."""
    path = Path(path)
    if not path.is_file():
        raise LatencyModelError(f"latency table {path} does not exist", hint="measure one with `hadmc-deploy lut --target ... -o FILE`")
    text = path.read_text()
    if not text.strip():
        raise LatencyModelError(f"latency table {path} is empty", hint="delete it and re-measure with `hadmc-deploy lut`")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LatencyModelError(
            f"latency table {path} is not valid JSON ({exc.msg} at line {exc.lineno})",
            hint="delete it and re-measure with `hadmc-deploy lut`",
        ) from exc
    return LatencyTable.from_dict(data, source=str(path))


def prices_sha256(path: str | Path) -> str:
    """SHA-256 of what a table prices with: every field except the feedback's record of past
    timings (`fitted_on`), which builds append to without changing a price (build/self_check.py),
    so a stage keyed on this reruns only when a prediction could change."""
    import hashlib

    table = read_table(path)
    data = table.to_dict()
    fb = table.feedback
    data["feedback"] = None if fb is None or (fb.scale == 1.0 and fb.offset_ms == 0.0) else {"scale": fb.scale, "offset_ms": fb.offset_ms}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def mismatches(meta: LutMeta, target: str, backend: str, backend_version: str | None, device: dict[str, Any] | None) -> list[str]:
    """Human-readable differences between where a LUT was measured and where it is used."""
    found = []
    if meta.target != target:
        found.append(f"target {meta.target!r} (this is {target!r})")
    if meta.backend != backend:
        found.append(f"backend {meta.backend!r} (this is {backend!r})")
    elif backend_version is not None and meta.backend_version != backend_version:
        found.append(f"{backend} version {meta.backend_version} (this is {backend_version})")
    if device is not None:
        for key in IDENTITY_KEYS:
            if key in meta.device and key in device and meta.device[key] != device[key]:
                found.append(f"device {key} {meta.device[key]!r} (this is {device[key]!r})")
    return found


def check_compatible(
    table: LatencyTable,
    source: str,
    *,
    target: str,
    backend: str,
    backend_version: str | None,
    device: dict[str, Any] | None,
    force: bool = False,
    ui: UI | None = None,
) -> None:
    """Refuse a LUT measured elsewhere unless `force`; then warn loudly instead.

    `backend_version`/`device` of None mean "cannot be checked here" (the backend
    is not installed on this machine, e.g. planning for a T4 on a laptop): that is
    a warning, not a refusal, because the table is then the only information there is.
    """
    ui = ui or quiet_ui()
    if not table.entries:
        raise LatencyModelError(f"latency table {source} has no entries", hint="re-measure it with `hadmc-deploy lut`")
    problems = mismatches(table.meta, target, backend, backend_version, device)
    if problems:
        text = f"latency table {source} was measured for " + "; ".join(problems)
        if not force:
            raise LatencyModelError(text, hint="measure a table on this device with `hadmc-deploy lut`, or pass --force to use it anyway")
        ui.warn(f"{text}. Using it anyway because of --force: predicted latencies may be wrong for this device.")
    if device is None or backend_version is None:
        ui.warn(f"cannot check latency table {source} against this machine ({backend} is not available here); trusting its fingerprint")
