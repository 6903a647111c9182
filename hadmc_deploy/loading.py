"""Load a user's model safely.

The default path never runs code from the model file: it opens it with
`torch.load(weights_only=True)` and rebuilds the architecture from `--arch`.
A fully pickled `nn.Module` loads only with `--trust-model`, because unpickling
it can execute arbitrary code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import pickletools
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_deploy.errors import (
    ArchSpecError,
    ModelFileCorruptError,
    ModelFileNotFoundError,
    StateDictMismatchError,
    UntrustedPickleError,
)

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "net")
PRUNED_FORMAT_PREFIX = "hadmc-pruned/"


@dataclass
class LoadedModel:
    """A model ready for the pipeline, with how it was obtained (recorded in reports)."""

    model: nn.Module
    kind: str  # "state_dict" | "pickle" | "pruned" | "arch"
    source: str
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchSpecError(f"--arch-kwargs is not valid JSON: {exc.msg}", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'') from exc
    if not isinstance(value, dict):
        raise ArchSpecError("--arch-kwargs must be a JSON object", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'')
    return value


def _import_from_file(path: Path, name: str) -> Any:
    if not path.is_file():
        raise ArchSpecError(f"--arch file {path} does not exist")
    module_name = f"_hadmc_arch_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ArchSpecError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ArchSpecError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        raise ArchSpecError(f"{path} defines no {name!r}")
    return getattr(module, name)


TORCHVISION_INSTALL = "pip install torchvision==0.28.0 --no-deps"
#: ops whose fake kernels torchvision registers at import; without its C++ extension they must exist as schemas
_TORCHVISION_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_library: list[Any] = []  # keeps the schema library alive


def _import_torchvision_models(spec: str) -> Any:
    """`torchvision.models`, also where its C++ extension does not load (a --no-deps wheel for another build).

    The model definitions are pure Python; only detection ops (nms) need the extension, and
    torchvision's import registers fake kernels for them. Defining their schemas first lets the
    import finish; calling those ops would still fail, which no classification model does.
    """
    if importlib.util.find_spec("torchvision") is None:
        raise ArchSpecError(f"--arch {spec} needs torchvision, which is not installed", hint=TORCHVISION_INSTALL)
    try:
        return importlib.import_module("torchvision.models")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _torchvision_library:
            raise ArchSpecError(f"--arch {spec}: torchvision does not import here ({_first_line(str(exc))})", hint=TORCHVISION_INSTALL) from exc
    except Exception as exc:
        raise ArchSpecError(f"--arch {spec}: torchvision does not import here ({type(exc).__name__}: {_first_line(str(exc))})", hint=TORCHVISION_INSTALL) from exc
    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]  # the failed import left half-initialised modules behind
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _TORCHVISION_OP_SCHEMAS.items():
        if not _op_exists(op):
            lib.define(schema)
    _torchvision_library.append(lib)
    return _import_torchvision_models(spec)


def _op_exists(op: str) -> bool:
    try:
        torch.ops.torchvision.__getattr__(op)
    except (AttributeError, RuntimeError):
        return False
    return True


def split_arch_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`NAME?a=1&b=false` -> (`NAME`, {"a": 1, "b": False}): keyword arguments written into the spec.

    Values are JSON (numbers, true/false/null, quoted strings), Python's True/False/None, or bare strings.
    """
    base, sep, query = spec.partition("?")
    kwargs: dict[str, Any] = {}
    if not sep:
        return spec, kwargs
    for item in filter(None, query.split("&")):
        key, eq, raw = item.partition("=")
        if not eq or not key.isidentifier():
            raise ArchSpecError(f"--arch {spec!r}: {item!r} is not key=value", hint="e.g. --arch torchvision:googlenet?aux_logits=false")
        literal = {"True": "true", "False": "false", "None": "null"}.get(raw, raw)
        try:
            kwargs[key] = json.loads(literal)
        except json.JSONDecodeError:
            kwargs[key] = raw
    return base, kwargs


def resolve_arch(spec: str) -> Any:
    """The callable an `--arch` spec names (`pkg.module:fn`, `file.py:fn`, `torchvision:NAME`, `timm:NAME`)."""
    spec = split_arch_spec(spec)[0]
    if ":" not in spec:
        raise ArchSpecError(f"--arch {spec!r} is not of the form module:callable", hint="e.g. --arch mymodels.py:resnet18 or --arch torchvision:resnet18")
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ArchSpecError(f"--arch {spec!r} is not of the form module:callable")
    if where == "torchvision":
        tvm = _import_torchvision_models(spec)
        try:
            return tvm.get_model_builder(name)
        except ValueError as exc:
            raise ArchSpecError(f"torchvision has no model {name!r}", hint="see torchvision.models.list_models()") from exc
    if where == "timm":
        try:
            import timm
        except Exception as exc:
            raise ArchSpecError(f"--arch {spec} needs timm: {exc}", hint="pip install timm") from exc
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    if where.endswith(".py") or "/" in where or "\\" in where:
        return _import_from_file(Path(where), name)
    try:
        module = importlib.import_module(where)
    except Exception as exc:
        raise ArchSpecError(f"cannot import module {where!r} for --arch: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, name):
        raise ArchSpecError(f"module {where!r} has no {name!r}")
    return getattr(module, name)


def build_arch(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """The model an `--arch` spec builds; `kwargs` (from --arch-kwargs) override those in `spec?k=v`."""
    kwargs = {**split_arch_spec(spec)[1], **(kwargs or {})}
    factory = resolve_arch(spec)
    try:
        model = factory(**(kwargs or {}))
    except Exception as exc:
        raise ArchSpecError(f"calling {spec}({_fmt_kwargs(kwargs)}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ArchSpecError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model


def _fmt_kwargs(kwargs: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in (kwargs or {}).items())


# -- reading the file ---------------------------------------------------------------------
def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        needs_code = "Weights only load failed" in text or "Unsupported global" in text or "Unsupported class" in text
        if weights_only and needs_code and _is_well_formed_pickle(path):
            raise UntrustedPickleError(
                f"{path} is a pickle that needs code to load (for example a whole nn.Module saved with torch.save(model)); "
                "unpickling it could run arbitrary code",
                hint="save model.state_dict() and pass --arch module:callable, or pass --trust-model if you trust this file",
            ) from exc
        if needs_code:  # the unpickler stumbled over bytes that are no pickle at all
            raise ModelFileCorruptError(f"{path} is not a PyTorch checkpoint: its bytes are neither a torch zip archive nor a pickle (corrupt, or another format)",
                                        hint="re-save the model with torch.save(model.state_dict(), path)") from exc
        raise ModelFileCorruptError(f"{path} is not a readable PyTorch checkpoint ({_first_line(text)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, ImportError, IndexError, KeyError, TypeError) as exc:
        # torch.load signals damaged files through many exception types (the weights-only
        # unpickler raises IndexError on garbage, zipfile errors on truncation).
        raise ModelFileCorruptError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {_first_line(str(exc))})",
            hint="re-save the checkpoint with torch.save",
        ) from exc


def _is_well_formed_pickle(path: Path) -> bool:
    """Whether the file is a structurally valid torch pickle (zip archive or legacy format).

    Why: the weights-only unpickler reports random bytes the same way as a real pickle that
    needs code ("unsupported global"); only a structural read tells "corrupt" from "untrusted".
    pickletools only decodes opcodes, it never runs them.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                data = archive.read(name)
        else:
            data = path.read_bytes()
        for _ in pickletools.genops(data):
            pass
        return True
    except Exception:  # any decoding failure means the bytes are not a pickle
        return False


def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights with NaN or Inf: nothing downstream could produce a meaningful artifact."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelFileCorruptError(
            f"{source} has NaN or Inf values in {len(bad)} tensor(s) ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
            hint="the weights are broken (a diverged training run?): save a checkpoint from before the divergence",
        )


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return text[:200]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict inside a checkpoint: the dict itself or one under a usual key."""
    if _is_state_dict(obj):
        sd = obj
    elif isinstance(obj, dict):
        sd = None
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and "module" in inner and _is_state_dict(inner["module"]):
                inner = inner["module"]
            if _is_state_dict(inner):
                sd = inner
                break
        if sd is None:
            return None
    else:
        return None
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load, but the error lists the first mismatches instead of a wall of text."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if shapes:
        problems.append(f"{len(shapes)} with other shapes ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})")
    if problems:
        raise StateDictMismatchError(
            f"{source} does not match the architecture: keys {', '.join(problems)}",
            hint="check --arch and --arch-kwargs (e.g. num_classes)",
        )
    model.load_state_dict(state_dict, strict=True)


def load_model(
    path: str | Path | None,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    *,
    trust_model: bool = False,
) -> LoadedModel:
    """Load MODEL as the CLI does. `path=None` with `--arch` gives the architecture at random init."""
    arch_kwargs = dict(arch_kwargs or {})
    if path is None:
        if arch is None:
            raise ArchSpecError("no model file and no --arch given", hint="pass MODEL, or --arch for a randomly initialised model")
        model = build_arch(arch, arch_kwargs)
        return LoadedModel(model.eval(), "arch", f"{arch} (random init)", arch, arch_kwargs)
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileCorruptError(f"{path} is a directory, not a model file")
    obj = _torch_load(path, weights_only=not trust_model)
    if isinstance(obj, nn.Module):
        # Only reachable with --trust-model: weights_only refuses modules.
        check_finite(obj, str(path))
        return LoadedModel(obj.eval(), "pickle", str(path), arch, arch_kwargs)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(PRUNED_FORMAT_PREFIX):
        from hadmc_deploy.pruned_checkpoint import load_pruned

        loaded = load_pruned(obj, str(path))
        check_finite(loaded.model, str(path))
        return loaded
    state_dict = extract_state_dict(obj)
    if state_dict is None:
        keys = ", ".join(list(obj)[:5]) if isinstance(obj, dict) else type(obj).__name__
        raise ModelFileCorruptError(
            f"{path} holds no state_dict (found {keys})",
            hint=f"save model.state_dict(), or a dict with one under {', '.join(STATE_DICT_KEYS[:4])}",
        )
    if arch is None and isinstance(obj, dict) and isinstance(obj.get("arch"), str):
        arch = obj["arch"]  # our own checkpoints record their architecture
        arch_kwargs = {**dict(obj.get("arch_kwargs") or {}), **arch_kwargs}
    if arch is None:
        raise ArchSpecError(
            f"{path} is a state_dict: the architecture is needed to rebuild the model",
            hint="pass --arch module:callable (and --arch-kwargs if it takes arguments)",
        )
    model = build_arch(arch, arch_kwargs)
    load_state_dict_checked(model, state_dict, str(path))
    check_finite(model, str(path))
    info = {k: v for k, v in obj.items() if k not in ("state_dict", "model", "model_state_dict", "ema") and isinstance(v, (int, float, str, list, dict))} if isinstance(obj, dict) and obj is not state_dict else {}
    return LoadedModel(model.eval(), "state_dict", str(path), arch, arch_kwargs, info)
