"""Whether a model runs at another batch size than the one it was given.

Why: a build exports a dynamic batch axis (timed at every `--batch` size) and the exporter traces
at batch 2; a forward that writes its batch size as a literal (`x.view(1, -1)`) failed there with
"the model fails on an input of shape (2, ...): pass the right --input-shape", although the shape
was right, and only after the latency table was measured.
"""

from __future__ import annotations

import torch
from torch import nn

from hadmc_deploy.errors import GraphError
from hadmc_deploy.graph.capture import user_location


def runs_at(model: nn.Module, input_shape: tuple[int, ...]) -> bool:
    """Whether `model` runs on zeros of `input_shape`."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape, device=device))
    except Exception:
        return False
    return True


def check_batch_free(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Raise a `GraphError` naming the model's line when it fails at a batch size other than
    `input_shape[0]` (the caller knows it runs at `input_shape`)."""
    other = 2 if input_shape[0] != 2 else 1
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            model(torch.zeros(other, *input_shape[1:], device=device))
    except Exception as exc:
        where = user_location(exc.__traceback__)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GraphError(
            f"the model runs at batch {input_shape[0]} but not at batch {other}: its forward fixes the batch size"
            + (f" at {where}" if where else "") + f" ({type(exc).__name__}: {first})",
            hint="write x.flatten(1) or x.view(x.size(0), -1) instead of a literal batch size: the deployed model takes any batch",
        ) from exc
