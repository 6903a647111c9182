"""The backend interface and registry (design: Polygraphy's runners behind one small interface).

Public methods validate and delegate to `_build`, `_run`, ... so checks live in
one place. Backends import their heavy libraries inside methods, never at module
import, so `import hadmc_deploy` works on any machine.
"""

from __future__ import annotations

import importlib
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_deploy.backends.request import BuildRequest, OrtBuildOptions, TrtBuildOptions
from hadmc_deploy.errors import ArtifactError, BackendUnavailableError, UsageError
from hadmc_deploy.fileio import write_json_atomic
from hadmc_deploy.specs import LayerSpec
from hadmc_deploy.targets import TargetProfile
from hadmc_deploy.timing import runs_for

METADATA_FILE = "metadata.json"
__all__ = ["METADATA_FILE", "Artifact", "Backend", "BuildRequest", "LatencyStats", "OrtBuildOptions", "TrtBuildOptions",
           "available_backends", "get", "register"]


@dataclass
class LatencyStats:
    """Latency of one configuration in milliseconds, from `runs` timed runs after warm-up."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    batch: int = 1
    warmup: int = 0

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1000.0 / self.p50_ms if self.p50_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, samples_ms: list[float], batch: int = 1, warmup: int = 0) -> LatencyStats:
        if not samples_ms:
            raise ValueError("no latency samples")
        arr = np.asarray(samples_ms, dtype=np.float64)
        return cls(
            p50_ms=float(np.percentile(arr, 50)),
            p90_ms=float(np.percentile(arr, 90)),
            p99_ms=float(np.percentile(arr, 99)),
            mean_ms=float(statistics.fmean(samples_ms)),
            min_ms=float(arr.min()),
            runs=len(samples_ms),
            batch=batch,
            warmup=warmup,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["throughput"] = self.throughput
        return data


@dataclass
class Artifact:
    """A directory holding the deployable model file and `metadata.json`."""

    path: Path
    model_file: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file

    @property
    def backend(self) -> str:
        return str(self.metadata.get("backend", ""))

    def save_metadata(self) -> None:
        write_json_atomic(self.path / METADATA_FILE, {**self.metadata, "model_file": self.model_file})

    @classmethod
    def load(cls, path: str | Path) -> Artifact:
        path = Path(path)
        meta_path = path / METADATA_FILE
        if not path.is_dir():
            raise ArtifactError(f"artifact directory {path} does not exist", hint="pass the directory a build wrote")
        if not meta_path.is_file():
            raise ArtifactError(f"{path} has no {METADATA_FILE}", hint="it is not an artifact directory written by hadmc-deploy")
        try:
            metadata = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{meta_path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        model_file = metadata.get("model_file")
        if not model_file or not (path / model_file).is_file():
            raise ArtifactError(f"{path}: model file {model_file!r} named in {METADATA_FILE} is missing")
        return cls(path=path, model_file=model_file, metadata=metadata)


class Backend:
    """Base class of backend plugins. Subclasses implement the underscored methods."""

    name: str = ""

    # -- availability ------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        """(True, version string) or (False, a one-line reason)."""
        raise NotImplementedError

    def require(self) -> None:
        ok, reason = self.available()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r} is not available here: {reason}")

    # -- public API: validate, then delegate ----------------------------------------
    def build(self, request: BuildRequest) -> Artifact:
        """Build the artifact `request` asks for; every backend reads the same typed request."""
        request.validate()
        self.require()
        return self._build(request)

    def run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_artifact(artifact)
        self.require()
        return self._run(artifact, inputs)

    def release_sessions(self) -> None:
        """Drop the sessions kept for the artifacts run or benchmarked so far, where an idle one
        costs the next model timed (ONNX Runtime overrides it). Whole-model timings of several
        artifacts call it after each one. A no-op here: an idle TensorRT execution context holds
        GPU memory but no CPU thread, and deserializing an engine every round would cost more."""

    def benchmark(self, artifact: Artifact, batch: int = 1, warmup: int = 10, runs: int = 50, min_seconds: float = 0.0) -> LatencyStats:
        """`runs` timed runs after `warmup`; with `min_seconds`, as many more as fill that much time
        (sized by a 3-run probe after the warm-up; see hadmc_deploy.timing for why)."""
        if batch < 1 or runs < 1 or warmup < 0 or min_seconds < 0:
            raise UsageError(f"batch and runs must be >= 1, warmup and min_seconds >= 0 (got batch={batch}, runs={runs}, warmup={warmup}, min_seconds={min_seconds})")
        self._check_artifact(artifact)
        self.require()
        if min_seconds > 0:
            probe = self._benchmark(artifact, batch, warmup, 3)
            runs, warmup = runs_for(min_seconds, probe.p50_ms, runs), 0  # the probe warmed the session
        return self._benchmark(artifact, batch, warmup, runs)

    def measure_layer(self, spec: LayerSpec, warmup: int = 10, runs: int = 30) -> LatencyStats:
        self.require()
        return self._measure_layer(spec, warmup, runs)

    def default_target(self) -> TargetProfile:
        """The target profile a build gets when the caller names none (timing tools, ad-hoc builds)."""
        raise NotImplementedError

    def describe_device(self) -> dict[str, Any]:
        """Device fingerprint for LUTs and artifact metadata (CPU model + ISA, or GPU + compute capability)."""
        raise NotImplementedError

    def _check_artifact(self, artifact: Artifact) -> None:
        if artifact.backend and artifact.backend != self.name:
            raise ArtifactError(f"artifact {artifact.path} was built by backend {artifact.backend!r}, not {self.name!r}")

    # -- implementation hooks ------------------------------------------------------
    def _build(self, request: BuildRequest) -> Artifact:
        raise NotImplementedError

    def _run(self, artifact: Artifact, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _benchmark(self, artifact: Artifact, batch: int, warmup: int, runs: int) -> LatencyStats:
        raise NotImplementedError

    def _measure_layer(self, spec: LayerSpec, warmup: int, runs: int) -> LatencyStats:
        raise NotImplementedError


# -- registry ---------------------------------------------------------------------
_REGISTRY: dict[str, Callable[[], Backend]] = {}
#: backend name -> module that registers it; imported on first use.
_KNOWN_MODULES = {
    "onnxruntime": "hadmc_deploy.backends.onnxruntime",
    "tensorrt": "hadmc_deploy.backends.tensorrt",
}


def register(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: `@register("onnxruntime")`."""

    def wrap(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get(name: str) -> Backend:
    if name not in _REGISTRY and name in _KNOWN_MODULES:
        importlib.import_module(_KNOWN_MODULES[name])
    if name not in _REGISTRY:
        raise UsageError(f"unknown backend {name!r}", hint=f"known backends: {', '.join(sorted(_KNOWN_MODULES))}")
    return _REGISTRY[name]()


def available_backends() -> dict[str, tuple[bool, str]]:
    out = {}
    for name in _KNOWN_MODULES:
        try:
            out[name] = get(name).available()
        except Exception as exc:  # a broken plugin must not break `targets`
            out[name] = (False, f"plugin failed to load: {exc}")
    return out
