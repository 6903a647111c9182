"""Bake weight re-parametrizations (weight norm, spectral norm, any `torch.nn.utils.parametrize`)
into plain weights once the model's state is loaded.

Why: a parametrized conv computes its weight in forward (`g * v / ||v||`), so the exported ONNX
has no weight initializer for the quantizer to read (ORT: "quantization parameters are not
specified for param .../Div_output_0") and surgery would slice `v` and `g`, not the weight that
deploys. In eval mode the baked weight is the same tensor the parametrization computes, so the
model's outputs do not change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def bake_reparametrizations(model: nn.Module) -> list[str]:
    """Replace every re-parametrized weight of `model` (in eval mode) by its current value, in
    place; the `module.attr` names it baked."""
    from torch.nn.utils import remove_spectral_norm, remove_weight_norm
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    model.eval()
    baked: list[str] = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                for attr in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
                    value = getattr(module, attr)
                    if not isinstance(value, nn.Parameter):
                        # with several originals (weight norm's g and v) torch 2.13 leaves the value
                        # as a buffer: not trained by recovery, not counted as a parameter
                        del module._buffers[attr]
                        module.register_parameter(attr, nn.Parameter(value.detach().clone()))
                    baked.append(f"{name}.{attr}" if name else attr)
            for hook in list(module._forward_pre_hooks.values()):
                # the deprecated hook-based forms; their remove functions also drop the state_dict hooks
                if isinstance(hook, WeightNorm):
                    remove_weight_norm(module, hook.name)
                elif isinstance(hook, SpectralNorm):
                    remove_spectral_norm(module, hook.name)
                    _drop_spectral_load_hook(module, hook.name)
                else:
                    continue
                baked.append(f"{name}.{hook.name}" if name else hook.name)
    return baked


def _drop_spectral_load_hook(module: nn.Module, attr: str) -> None:
    """`remove_spectral_norm` (torch 2.13) leaves its load_state_dict pre-hook, which then asks a
    baked state_dict for `weight_orig` and `weight_u`."""
    from torch.nn.utils.spectral_norm import SpectralNormLoadStateDictPreHook

    for key, wrapped in list(module._load_state_dict_pre_hooks.items()):
        hook = getattr(wrapped, "hook", wrapped)
        if isinstance(hook, SpectralNormLoadStateDictPreHook) and hook.fn.name == attr:
            del module._load_state_dict_pre_hooks[key]
