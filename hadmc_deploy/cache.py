"""The build cache: every stage's outputs keyed by the SHA-256 of its inputs.

A stage's key hashes what the stage saw: upstream outputs (by content), the
options it reads, data hashes, library versions and the source of the modules
that implement it. A stage whose key matches its manifest, and whose output
files still hash to what the manifest recorded, is skipped. So a rebuild with
unchanged inputs is instant, `--resume` after a failure restarts at the failed
stage, and editing one option reruns only the stages downstream of it.

Manifests are small JSON files in `<build>/manifests/<stage>.json`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hadmc_deploy import __version__
from hadmc_deploy.fileio import sha256_file, write_json_atomic

MANIFEST_DIR = "manifests"
MANIFEST_SCHEMA = "hadmc-deploy/stage-manifest"
MANIFEST_SCHEMA_VERSION = 1
_VERSIONED_PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "onnxslim", "onnxsim", "onnxscript")


def tool_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour shapes stage outputs."""
    out = {"hadmc_deploy": __version__}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


PACKAGE = "hadmc_deploy"


def code_hash(modules: tuple[str, ...] | list[str]) -> str:
    """Hash of the source of `modules` and of every project module they import, transitively.

    Why the closure: a stage's output depends on all the code it runs. Keying on the few
    modules a stage names served a plan computed by old code after `search/knapsack.py`
    changed. The closure follows `import` statements anywhere in a module (functions
    included), within this package only; library versions are keyed separately.
    """
    digest = hashlib.sha256()
    for path in sorted(import_closure(tuple(modules))):
        digest.update(path.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def import_closure(modules: tuple[str, ...]) -> set[str]:
    """Source files of `modules` and of the project modules they import (transitively)."""
    seen: set[str] = set()
    files: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        todo.extend(_project_imports_cached(name, path))
    return files


@functools.cache
def _project_imports_cached(name: str, path: str) -> tuple[str, ...]:
    """`project_imports` parsed once per process: every stage's key walks mostly the same files
    (13 closures re-parsed them: 7.5 s of a build)."""
    return tuple(project_imports(name, path))


@functools.cache
def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec else None
    return origin if origin and origin.endswith(".py") and Path(origin).is_file() else None


def project_imports(name: str, path: str, parents: bool = True) -> list[str]:
    """Project modules named by the import statements of one source file (anywhere in it).

    With `parents`, every parent package of an imported module too: its `__init__` runs on
    import, so it belongs to a closure (not to an import-cycle check)."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.append(mod)
            # `from pkg import submodule` imports a module, not a name
            found += [f"{mod}.{alias.name}" for alias in node.names]
    out = []
    for mod in found:
        if mod == PACKAGE or mod.startswith(PACKAGE + "."):
            # a parent package's __init__ runs too
            parts = mod.split(".")
            out += [".".join(parts[: i + 1]) for i in range(len(parts))] if parents else [mod]
    return out


def hash_json(obj: Any) -> str:
    """SHA-256 of a canonical JSON rendering (sorted keys; tuples as lists)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensor_hashes(state_dict: dict[str, Any]) -> dict[str, str]:
    """Per-tensor SHA-256 over dtype, shape and bytes (used by the cache and `diff`)."""
    out = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype.is_floating_point and t.element_size() == 2:
            t = t.float()  # numpy has no bfloat16; the dtype is already in the digest
        digest.update(t.numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


@dataclass
class StageRecord:
    """What a finished stage left behind: its key, output files with hashes, and a JSON result."""

    stage: str
    key: str
    outputs: dict[str, str]
    result: dict[str, Any]
    seconds: float
    inputs: dict[str, Any] = field(default_factory=dict)
    finished_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "stage": self.stage,
            "key": self.key,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "result": self.result,
            "seconds": self.seconds,
            "finished_at": self.finished_at,
        }


class StageCache:
    """Manifests of one build directory."""

    def __init__(self, build_dir: Path, enabled: bool = True) -> None:
        self.build_dir = Path(build_dir)
        self.enabled = enabled

    def manifest_path(self, stage: str) -> Path:
        return self.build_dir / MANIFEST_DIR / f"{stage.replace(' ', '_')}.json"

    def key(self, stage: str, inputs: dict[str, Any]) -> str:
        return hash_json({"stage": stage, "inputs": inputs})

    def lookup(self, stage: str, key: str) -> StageRecord | None:
        """The stage's record if its key matches and every output file is intact."""
        if not self.enabled:
            return None
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        if data.get("schema_version") != MANIFEST_SCHEMA_VERSION or data.get("key") != key:
            return None
        outputs = data.get("outputs", {})
        for rel, digest in outputs.items():
            file = self.build_dir / rel
            if not file.is_file() or sha256_file(file) != digest:
                return None
        return StageRecord(stage, key, outputs, data.get("result", {}), float(data.get("seconds", 0.0)), data.get("inputs", {}), data.get("finished_at", ""))

    def record(self, stage: str, key: str, inputs: dict[str, Any], outputs: list[Path], result: dict[str, Any], seconds: float) -> StageRecord:
        hashed = {}
        for file in outputs:
            file = Path(file)
            if file.is_dir():
                for sub in sorted(p for p in file.rglob("*") if p.is_file()):
                    hashed[str(sub.relative_to(self.build_dir))] = sha256_file(sub)
            elif file.is_file():
                hashed[str(file.relative_to(self.build_dir))] = sha256_file(file)
        rec = StageRecord(stage, key, hashed, result, seconds, inputs, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_json_atomic(self.manifest_path(stage), rec.to_dict())
        return rec

    def changed_inputs(self, stage: str, inputs: dict[str, Any]) -> list[str]:
        """Which top-level inputs differ from the recorded manifest (why a stage reruns)."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return []
        try:
            old = json.loads(path.read_text()).get("inputs", {})
        except (json.JSONDecodeError, OSError):
            return ["manifest unreadable"]
        fresh = json.loads(json.dumps(inputs, sort_keys=True, default=str))
        return sorted(k for k in set(old) | set(fresh) if old.get(k) != fresh.get(k)) or ["output files changed"]

    def output_hash(self, stage: str) -> str | None:
        """A digest of a recorded stage's outputs and result, to chain into downstream keys."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return hash_json({"outputs": data.get("outputs", {}), "result": data.get("result", {})})
