"""Load a user's model safely.

The default path never runs code from the model file: it opens it with
`torch.load(weights_only=True)` and rebuilds the architecture from `--arch`.
A fully pickled `nn.Module` loads only with `--trust-model`, because unpickling
it can execute arbitrary code.
"""

from __future__ import annotations

import json
import pickle
import pickletools
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_deploy.arch import (
    LoadedModel,
    build_arch,
    check_finite,
    check_single_input,
    cwd_importable,
    first_line,
    load_state_dict_checked,
    parse_arch_kwargs,
    resolve_arch,
    split_arch_spec,
)
from hadmc_deploy.errors import (
    ArchSpecError,
    ModelFileCorruptError,
    ModelFileNotFoundError,
    UntrustedPickleError,
)
from hadmc_deploy.pruned_checkpoint import load_pruned
from hadmc_deploy.reparam import bake_reparametrizations

#: re-exported: callers load and build models through this module
__all__ = ["LoadedModel", "build_arch", "check_finite", "load_model", "load_state_dict_checked", "parse_arch_kwargs", "resolve_arch", "split_arch_spec"]

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "net")
PRUNED_FORMAT_PREFIX = "hadmc-pruned/"


# -- reading the file ---------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON."""
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] < 1 << 30  # a truncated file still reads as one, and is called corrupt


def _safetensors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file (weights only by design: no code runs to read them)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as exc:
        raise ModelFileCorruptError(f"{path} is a truncated or corrupt safetensors file ({type(exc).__name__}: {first_line(str(exc))})",
                                    hint="save it again with safetensors.torch.save_file(model.state_dict(), path)") from exc


def _refuse_other_formats(path: Path) -> None:
    """A one-line error for a model file of another framework or form that torch.load would call
    corrupt (a TorchScript archive: "truncated or corrupt"; an ONNX file: "neither a torch zip
    archive nor a pickle"). Both lack what pruning needs: the nn.Module's code."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise ModelFileCorruptError(
                f"{path} is a TorchScript archive (torch.jit.save): its layers cannot be pruned, TorchScript keeps no nn.Module code to rebuild",
                hint="save the eager model's weights with torch.save(model.state_dict(), path) and pass --arch FILE.py:CLASS")
    elif path.suffix.lower() == ".onnx" and _is_onnx(path):
        raise ModelFileCorruptError(
            f"{path} is an ONNX model: hadmc-deploy compiles PyTorch models (it prunes their layers), not exported graphs",
            hint="pass the PyTorch state_dict with --arch FILE.py:CLASS; an .onnx file can be timed with `hadmc-deploy bench`")


def _is_onnx(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf ModelProto: leave it to torch.load's own message
        return False
    return bool(model.ir_version and model.graph.node)


def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        if weights_only:
            return torch.load(path, map_location="cpu", weights_only=True)
        with cwd_importable():
            return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        if weights_only or not _is_well_formed_pickle(path):
            raise _corrupt(path, exc) from exc
        # a whole model pickles its class by module and name; one the unpickler cannot find is no damage
        where = f"module {exc.name!r}" if isinstance(exc, ModuleNotFoundError) else f"'{first_line(str(exc))}'"
        raise ModelFileCorruptError(
            f"{path} pickles a model whose class cannot be found here ({type(exc).__name__}: {where})",
            hint="run from the folder that holds the class's module, or add it to PYTHONPATH (a class defined in the script that "
                 "saved the model, module '__main__', is not found again): or save model.state_dict() and pass --arch FILE.py:CLASS",
        ) from exc
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
        raise ModelFileCorruptError(f"{path} is not a readable PyTorch checkpoint ({first_line(text)})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, ImportError, IndexError, KeyError, TypeError) as exc:
        # torch.load signals damaged files through many exception types (the weights-only
        # unpickler raises IndexError on garbage, zipfile errors on truncation).
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: BaseException) -> ModelFileCorruptError:
    return ModelFileCorruptError(f"{path} is truncated or corrupt ({type(exc).__name__}: {first_line(str(exc))})", hint="re-save the checkpoint with torch.save")


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
        check_single_input(model, arch)
        return LoadedModel(model.eval(), "arch", f"{arch} (random init)", arch, arch_kwargs, _baked({}, model))
    path = Path(path)
    if not path.exists():
        raise ModelFileNotFoundError(f"model file {path} does not exist")
    if path.is_dir():
        raise ModelFileCorruptError(f"{path} is a directory, not a model file")
    if _is_safetensors(path):
        obj: Any = _safetensors_state_dict(path)
    else:
        _refuse_other_formats(path)
        obj = _torch_load(path, weights_only=not trust_model)
    if isinstance(obj, nn.Module):
        # Only reachable with --trust-model: weights_only refuses modules.
        info = {}
        reduced = sorted({str(t.dtype).removeprefix("torch.") for t in [*obj.parameters(), *obj.buffers()] if t.dtype in (torch.float16, torch.bfloat16)})
        if reduced:
            # a model saved after .half(): the pipeline computes, calibrates and exports in float32 (the
            # deployed precision is the build's); in half it failed on float32 inputs, called a wrong --input-shape
            obj = obj.float()
            info["converted_to_float32_from"] = reduced
        check_finite(obj, str(path))
        check_single_input(obj, str(path))
        return LoadedModel(obj.eval(), "pickle", str(path), arch, arch_kwargs, _baked(info, obj))
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith(PRUNED_FORMAT_PREFIX):
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
    check_single_input(model, arch)
    prefix = load_state_dict_checked(model, state_dict, str(path))
    check_finite(model, str(path))
    info = {k: v for k, v in obj.items() if k not in ("state_dict", "model", "model_state_dict", "ema") and isinstance(v, (int, float, str, list, dict))} if isinstance(obj, dict) and obj is not state_dict else {}
    if prefix:
        info["stripped_key_prefix"] = prefix
    return LoadedModel(model.eval(), "state_dict", str(path), arch, arch_kwargs, _baked(info, model))


def _baked(info: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """`info`, with the weights whose weight/spectral-norm parametrization was baked (`reparam.py`)."""
    baked = bake_reparametrizations(model)
    return {**info, "baked_reparametrizations": baked} if baked else info
