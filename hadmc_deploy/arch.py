"""Architectures: resolving an `--arch` spec to a constructor, building it, and loading a
state_dict into it strictly. Shared by `loading` (user files) and `pruned_checkpoint`
(the tool's own checkpoints), which is why it is its own module."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_deploy.errors import ArchSpecError, ModelFileCorruptError, StateDictMismatchError


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


@contextmanager
def cwd_importable() -> Iterator[None]:
    """The working directory on the import path (last: it shadows no installed package) for the
    duration: `--arch models:Net` and a trusted pickle of a class from models.py are found where
    `python` finds them. The console script's path holds its own bin/ directory instead, and both
    failed from the user's project folder (a pickle "truncated or corrupt")."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


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
            raise ArchSpecError(f"--arch {spec}: torchvision does not import here ({first_line(str(exc))})", hint=TORCHVISION_INSTALL) from exc
    except Exception as exc:
        raise ArchSpecError(f"--arch {spec}: torchvision does not import here ({type(exc).__name__}: {first_line(str(exc))})", hint=TORCHVISION_INSTALL) from exc
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
        with cwd_importable():
            module = importlib.import_module(where)
    except Exception as exc:
        raise ArchSpecError(f"cannot import module {where!r} for --arch: {type(exc).__name__}: {exc}",
                            hint=f"run from the folder that holds it, or name its file: --arch path/to/{where.replace('.', '/')}.py:{name}") from exc
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



def wrapper_prefix(keys: list[str], expected: set[str]) -> str:
    """The prefix every key carries when stripping it gives exactly `expected` ("" if none does):
    training wrappers save `model.`, `net.`, `student.` and the like in front of the model's own names."""
    if not keys or set(keys) == expected:
        return ""
    parts = keys[0].split(".")
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth]) + "."
        if all(k.startswith(prefix) for k in keys) and {k[len(prefix) :] for k in keys} == expected:
            return prefix
    return ""


def load_state_dict_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> str:
    """Strict load, but the error lists the first mismatches instead of a wall of text. A prefix
    that every key carries and whose removal matches the model exactly is removed; returns it."""
    expected = model.state_dict()
    prefix = wrapper_prefix(list(state_dict), set(expected))
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
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
    return prefix



def check_finite(model: nn.Module, source: str) -> None:
    """Refuse weights with NaN or Inf: nothing downstream could produce a meaningful artifact."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ModelFileCorruptError(
            f"{source} has NaN or Inf values in {len(bad)} tensor(s) ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})",
            hint="the weights are broken (a diverged training run?): save a checkpoint from before the divergence",
        )




def check_single_input(model: nn.Module, source: str) -> None:
    """Refuse a model whose forward needs more than one input: every stage feeds it one image batch
    (--input-shape), and the first call would fail inside PyTorch as an internal error."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without an inspectable signature: let the trace decide
        return
    required = [p.name for p in params if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if len(required) > 1:
        raise ArchSpecError(
            f"{source}: forward({', '.join(required)}) needs {len(required)} inputs; hadmc-deploy builds models with one image input",
            hint=f"wrap it in a module whose forward(x) supplies {', '.join(required[1:])} (e.g. fixed tensors), and pass that as --arch",
        )


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return text[:200]
