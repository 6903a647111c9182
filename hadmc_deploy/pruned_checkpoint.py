"""The project's own pruned-model checkpoint: loads without unpickling code.

A pruned model's class is the user's architecture with narrower tensors, so a
plain state_dict no longer fits `--arch`. The checkpoint therefore records how
to rebuild it: the architecture spec and kwargs, the input shape it was traced
at, and the width plan(s) with the kept channel indices. Loading rebuilds the
architecture, re-traces, re-applies the same surgery and then loads the
state_dict - only tensors, strings and numbers are stored, so
`torch.load(weights_only=True)` opens it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_deploy.arch import LoadedModel, build_arch, load_state_dict_checked
from hadmc_deploy.errors import ArchSpecError, ModelFileCorruptError
from hadmc_deploy.fileio import atomic_path
from hadmc_deploy.graph.types import WidthPlan
from hadmc_deploy.reparam import bake_reparametrizations
from hadmc_deploy.ui import silent_ui

FORMAT = "hadmc-pruned/1"


def save_pruned(
    path: str | Path,
    model: nn.Module,
    loaded: LoadedModel,
    plan: WidthPlan,
    input_shape: tuple[int, ...],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the pruned `model` (obtained from `loaded` with `plan`) atomically to `path`."""
    if not loaded.arch:
        raise ArchSpecError(
            "a pruned checkpoint needs the architecture spec to be rebuilt, and this model was loaded without --arch",
            hint="load the model from a state_dict with --arch module:callable",
        )
    stages = list(loaded.info.get("stages", [])) if loaded.kind == "pruned" else []
    stages.append(plan.to_json())
    obj: dict[str, Any] = {
        "format": FORMAT,
        "arch": loaded.arch,
        "arch_kwargs": dict(loaded.arch_kwargs),
        "input_shape": [int(d) for d in input_shape],
        "plan": plan.to_json(),
        "stages": stages,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    for key, value in (extra or {}).items():
        if key in obj:
            raise ValueError(f"extra key {key!r} would overwrite a checkpoint field")
        obj[key] = value
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_pruned(obj: dict[str, Any], source: str) -> LoadedModel:
    """Rebuild a pruned model from its checkpoint dict (see the module docstring)."""
    from hadmc_deploy.graph.trace import trace
    from hadmc_deploy.surgery import apply

    if obj.get("format") != FORMAT:
        raise ModelFileCorruptError(f"{source} is a pruned checkpoint of format {obj.get('format')!r}; this version reads {FORMAT}", hint="upgrade hadmc-deploy")
    try:
        arch = str(obj["arch"])
        arch_kwargs = dict(obj.get("arch_kwargs") or {})
        input_shape = tuple(int(d) for d in obj["input_shape"])
        stages = [WidthPlan.from_json(text) for text in obj.get("stages") or [obj["plan"]]]
        state_dict = obj["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileCorruptError(f"{source} is an incomplete pruned checkpoint ({type(exc).__name__}: {exc})") from exc
    model = build_arch(arch, arch_kwargs).eval()
    bake_reparametrizations(model)  # as `load_model` did before the original was pruned
    for plan in stages:
        graph = trace(model, input_shape, ui=silent_ui())  # its warnings were shown when the original was traced
        model, _ = apply(model, graph, WidthPlan(keep=plan.keep, indices=plan.indices), inplace=True)
    load_state_dict_checked(model, state_dict, source)
    info = {k: v for k, v in obj.items() if k not in ("state_dict",) and isinstance(v, (int, float, str, list, dict))}
    return LoadedModel(model.eval(), "pruned", source, arch, arch_kwargs, info)
