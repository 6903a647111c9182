"""The channels a model's training forward reaches that its eval forward does not.

The dependency graph is traced in eval mode, as the model deploys. An auxiliary classifier behind
`if self.training` (GoogLeNet, Inception-v3) reads channels that graph never sees; recovery trains
the pruned model, and such a layer left at full width failed there ("mat1 and mat2 shapes cannot
be multiplied"). Where a model's code reads `training`, its training forward is captured too and,
where it runs modules the eval graph did not, its channels are followed into the same trace state:
each of its layer outputs is joined to the same layer's output in the eval pass, its new consumers
(the auxiliary head's input) join those channels' groups, its constraints hold for both, and
layers that run only in training keep their own channels whole. Its costs are not kept: the
deployed model runs in eval mode.

A module of its own because the trace state's bookkeeping across two passes is one job, apart
from following channels through one graph (`trace`), which hands in its capture and interpreter.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from hadmc_deploy.graph.calls import forget_calls
from hadmc_deploy.graph.labels import LabelState


def join_training_branches(
    model: nn.Module,
    input_shape: tuple[int, ...],
    eval_gm: fx.GraphModule,
    state: LabelState,
    capture: Callable[[nn.Module, torch.Tensor], fx.GraphModule | None],
    interpret: Callable[[fx.GraphModule, torch.Tensor], None],
) -> None:
    """Follow the training forward's channels into `state` where it runs modules `eval_gm` does not
    (`capture` gives its graph or None; `interpret` follows a graph's channels into `state`)."""
    if not reads_training(model):
        return
    shape = (max(2, input_shape[0]), *input_shape[1:])  # BatchNorm in training needs two samples
    try:
        twin = copy.deepcopy(model).train()  # running statistics move in training mode: the user's model stays as it was
    except Exception:  # a model that cannot be copied (a hook holding a lock): the eval graph stands, as before
        return
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    train_gm = capture(twin, example)
    if train_gm is None or not _runs_more(eval_gm, train_gm):
        return
    first_source, first_member = len(state.sources), len(state.members)
    forget_calls(state)  # a module's calls are counted per pass
    interpret(train_gm, example)
    earlier: dict[str, list[Any]] = defaultdict(list)
    for src in state.sources[:first_source]:
        earlier[src.name].append(src)
    count: Counter[str] = Counter()
    for src in state.sources[first_source:]:
        k = count[src.name]
        count[src.name] += 1
        atoms = np.arange(src.start, src.start + src.width, dtype=np.int64)
        twin_src = earlier[src.name][k] if k < len(earlier[src.name]) else None
        if twin_src is not None and twin_src.width == src.width:
            state.uf.union_arrays(np.arange(twin_src.start, twin_src.start + src.width, dtype=np.int64), atoms)
        elif src.kind == "layer":
            state.lock(atoms, f"layer {src.name} runs only in training")
    # a tensor both passes sliced is one member (its labels are joined above)
    known = {(m.module, m.attr, m.axis, m.role) for m in state.members[:first_member]}
    state.members[first_member:] = [m for m in state.members[first_member:] if (m.module, m.attr, m.axis, m.role) not in known]


def _runs_more(eval_gm: fx.GraphModule, train_gm: fx.GraphModule) -> bool:
    seen = {n.target for n in eval_gm.graph.nodes if n.op in ("call_module", "get_attr")}
    return any(n.target not in seen for n in train_gm.graph.nodes if n.op in ("call_module", "get_attr"))


def reads_training(model: nn.Module) -> bool:
    """Whether a module class written outside torch itself reads `training` anywhere in its code (a
    helper its forward calls counts: torchvision's GoogLeNet reads it in `_forward`), or its source
    cannot be read: only those can run other layers in training. Why: tracing the training forward
    again costs a copy of the model and a pass of it (ResNet-18 at 224)."""
    for cls in {type(m) for m in model.modules()}:
        if cls.__module__.startswith("torch."):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            return True
        if "training" in source:
            return True
    return False
