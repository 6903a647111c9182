"""Parameter and MAC counts from one forward pass with hooks (no private autograd fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hadmc_deploy.errors import UsageError


@dataclass
class ModelProfile:
    params: int
    macs: int
    per_module_macs: dict[str, int]
    #: the first output's shape (a classifier's logits)
    output_shape: tuple[int, ...]
    #: every output's shape, by name ("0", "1", ... for tuples; the keys of a dict output)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int | None:
        """Classes of a single-output classifier ([N, classes]); None for other outputs."""
        if len(self.output_shapes) == 1 and len(self.output_shape) == 2:
            return int(self.output_shape[-1])
        return None


def output_shapes(out: object, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a (nested) tuple, list or dict output."""
    if isinstance(out, torch.Tensor):
        return {prefix or "0": tuple(out.shape)}
    items = out.items() if isinstance(out, dict) else enumerate(out) if isinstance(out, (tuple, list)) else []
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in items:
        shapes.update(output_shapes(value, f"{prefix}.{key}" if prefix else str(key)))
    return shapes


def _module_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        per_out = module.in_channels // module.groups
        for k in module.kernel_size:
            per_out *= k
        return int(output.numel() * per_out)
    if isinstance(module, (nn.ConvTranspose2d,)):
        x = inputs[0]
        kh, kw = module.kernel_size
        return int(x.numel() * (module.out_channels // module.groups) * kh * kw)
    if isinstance(module, nn.Linear):
        return int(output.numel() * module.in_features)
    return 0


@torch.no_grad()
def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> ModelProfile:
    """Params and MACs (multiply-accumulates, batch included) at `input_shape`."""
    macs: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: macs.__setitem__(name, macs.get(name, 0) + _module_macs(m, i, o))))
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(input_shape))
    except (RuntimeError, ValueError, IndexError) as exc:  # a shape the model cannot take: the user's input, not a bug
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"the model does not run on an input of shape {list(input_shape)}: {first}",
                         hint="pass --input-shape N,C,H,W as the model takes it") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    shapes = output_shapes(out)
    first = next(iter(shapes.values()), ())
    return ModelProfile(params=params, macs=sum(macs.values()), per_module_macs=macs, output_shape=first, output_shapes=shapes)


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"
