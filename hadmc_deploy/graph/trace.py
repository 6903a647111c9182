"""Trace a model with `torch.fx` and follow its channels through every node.

`trace(model, input_shape)` captures the fx graph (`capture`: fx symbolic
tracing that also knows each value, so chunk/split unpacking, len() and
shape-only branches trace), runs it once at the user's input shape
(an `fx.Interpreter`: real tensors give every node's shape, like ShapeProp)
and applies each node's channel rule (`rules`, `module_rules`). `build` turns
what was learned into a `DependencyGraph`.

Only public APIs are used (fx.Tracer, fx.Interpreter); nothing reads
autograd internals, which is what breaks other pruners on new PyTorch releases.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import fx, nn

from hadmc_deploy.errors import GraphError
from hadmc_deploy.graph import rules as R
from hadmc_deploy.graph.build import build_graph
from hadmc_deploy.graph.capture import UntraceableConstruct, capture, is_subclass_leaf
from hadmc_deploy.graph.labels import ChannelInfo, LabelState
from hadmc_deploy.graph.module_rules import MODULE_RULES, WEIGHTED_LAYER_TYPES, rule_for_module
from hadmc_deploy.graph.training_pass import join_training_branches
from hadmc_deploy.graph.types import DependencyGraph
from hadmc_deploy.ui import UI, quiet_ui


def _function_rule(target: Any) -> Any:
    if target is getattr:
        return _tensor_attribute
    if target in R.ELEMENTWISE_TARGETS:
        return R.elementwise
    if target in R.PASSTHROUGH_FUNCTIONS:
        return R.passthrough
    if target is torch.nn.functional.pad:
        return R.padding
    if target in R.SPATIAL_FUNCTIONS:
        return R.spatial(R.SPATIAL_FUNCTIONS[target])
    if target in R.REDUCTIONS:
        return R.reduction
    if target in (torch.matmul, torch.bmm, operator.matmul):
        return R.matmul
    if target is torch.nn.functional.grid_sample:
        return R.grid_sample
    if target is torch.nn.functional.local_response_norm:
        return R.cross_channel_norm
    if target is torch.nn.functional.normalize:
        return R.normalize
    if target in (torch.nn.functional.layer_norm, torch.layer_norm):
        return R.functional_layer_norm
    if target in (torch.nn.functional.softmax, torch.softmax, torch.nn.functional.log_softmax, torch.log_softmax, torch.nn.functional.softmin):
        return R.softmax_like
    if target in (torch.nn.functional.channel_shuffle, torch.channel_shuffle):
        return R.channel_shuffle(lambda ctx: int(ctx.args[1]))
    if target in (torch.nn.functional.pixel_shuffle, torch.pixel_shuffle):
        return R.pixel_shuffle(lambda ctx: int(ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["upscale_factor"]), unshuffle=False)
    if target in (torch.nn.functional.pixel_unshuffle, torch.pixel_unshuffle):
        return R.pixel_shuffle(lambda ctx: int(ctx.args[1] if len(ctx.args) > 1 else ctx.kwargs["downscale_factor"]), unshuffle=True)
    if target in R.SHAPE_FUNCTIONS:
        return R.shape_op
    if isinstance(target, type) and issubclass(target, tuple):  # a namedtuple of outputs
        return R.returned_container
    return R.unknown


def _method_rule(name: str) -> Any:
    if name in R.ELEMENTWISE_METHODS:
        return R.elementwise
    if name in R.PASSTHROUGH_METHODS:
        return R.passthrough
    if name in R.SHAPE_METHODS:
        return R.shape_op
    if name in R.REDUCTIONS:
        return R.reduction
    if name in ("matmul", "bmm", "__matmul__"):
        return R.matmul
    if name in ("softmax", "log_softmax"):
        return R.softmax_like
    if name in ("size", "dim", "numel"):
        return lambda ctx: None
    return R.unknown


def _tensor_attribute(ctx: R.RuleContext) -> Any:
    """`x.shape`, `x.dtype`, `x.ndim`...: metadata, no channels; `x.T`/`x.mT` move them like a transpose;
    `.values`/`.indices` of a max or min over a dim: that piece's channels."""
    pieces = ctx.infos.get(ctx.node.args[0])
    if isinstance(pieces, list) and len(ctx.node.args) > 1 and ctx.node.args[1] in ("values", "indices"):
        return pieces[0 if ctx.node.args[1] == "values" else 1]
    if isinstance(ctx.out, torch.Tensor):
        return R.unknown(ctx)
    return None


class _ChannelInterpreter(fx.Interpreter):
    """Runs the graph on real tensors and, beside each value, its channel labels."""

    def __init__(self, gm: fx.GraphModule, state: LabelState, ignore: set[str]) -> None:
        super().__init__(gm)
        self.state = state
        self.ignore = ignore
        self.infos: dict[Any, Any] = {"__root__": gm}
        self.drafts: list[R.LayerDraft] = []
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        ctx = R.RuleContext(self.state, n, tuple(args), dict(kwargs), out, self.infos, self.drafts)
        self.infos[n] = self._apply(ctx)
        if isinstance(out, torch.Tensor):
            self.values[n] = tuple(out.shape)
        return out

    def _apply(self, ctx: R.RuleContext) -> Any:
        n = ctx.node
        if n.op == "placeholder":
            if isinstance(ctx.out, (list, tuple)):  # forward(self, *inputs)
                return [self._input_info(v) for v in ctx.out]
            return self._input_info(ctx.out)
        if n.op == "get_attr":
            return self._param_info(n, ctx.out)
        if n.op == "output":
            for arg, _ in ctx.tensor_args():
                info = ctx.info(arg)
                if info is not None:
                    self.state.lock(info.labels, "a model output (classes, boxes, features) is never pruned")
            return None
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            ctx.module_name = str(n.target)
            rule = rule_for_module(module)
            if rule is None:
                rule = R.unknown
            before = len(self.drafts)
            start_member = len(self.state.members)
            result = rule(ctx)
            for d in self.drafts[before:]:
                d.module = module
            if is_subclass_leaf(module, WEIGHTED_LAYER_TYPES):
                result = self._subclass_layer(ctx, module, result)
            if str(n.target) in self.ignore or any(str(n.target).startswith(p + ".") for p in self.ignore):
                self._lock_ignored(ctx, result, start_member)
            return result
        if n.op == "call_method":
            return _method_rule(str(n.target))(ctx)
        return _function_rule(n.target)(ctx)

    def _input_info(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            atoms = self.state.new_source("input", "input", value.shape[1])
            self.state.lock(atoms, "the network input")
            return R.make_info((1,), atoms)
        return None

    def _subclass_layer(self, ctx: R.RuleContext, module: nn.Module, result: Any) -> Any:
        """A user subclass of a known layer, pruned by its base class's rule: when it overrides
        forward, what it does there is not known, so the channels are prunable but not exact (a
        weight standardised over its input channels changes when one is removed); when its output
        is not shaped like the base layer's, nothing is pruned."""
        base = next(t for t in type(module).__mro__ if t in MODULE_RULES)
        if type(module).forward is base.forward:
            return result
        width = getattr(module, "out_channels", getattr(module, "out_features", None))
        out = ctx.out
        channel_axis = 1 if not isinstance(module, nn.Linear) else -1
        if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[channel_axis] != width:
            ctx.lock_inputs(f"{type(module).__name__} overrides {base.__name__}.forward and returns another shape")
            if isinstance(result, ChannelInfo):
                self.state.lock(result.labels, f"{type(module).__name__} returns another shape than {base.__name__}")
            return None
        _mark_call(ctx, result, self.state.mark_inexact, f"{type(module).__name__} overrides {base.__name__}.forward")
        return result

    def _lock_ignored(self, ctx: R.RuleContext, result: Any, start_member: int) -> None:
        reason = f"--ignore {ctx.module_name}"
        for member in self.state.members[start_member:]:
            self.state.lock(member.labels, reason)
        _mark_call(ctx, result, self.state.lock, reason)

    def _param_info(self, n: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        big = [d for d, size in enumerate(value.shape) if size > 1]
        if len(big) != 1:
            return None
        owner, _, attr = str(n.target).rpartition(".")
        atoms = self.state.new_source(str(n.target), "param", value.shape[big[0]])
        R.record_member(R.RuleContext(self.state, n, (), {}, value, self.infos, self.drafts), owner, attr, big[0], atoms, "out")
        return ChannelInfo((big[0],), atoms)


def _mark_call(ctx: R.RuleContext, result: Any, mark: Any, reason: str) -> None:
    """`mark(labels, reason)` (lock, or mark inexact) on every input's and the result's channels."""
    for arg, _ in ctx.tensor_args():
        info = ctx.info(arg)
        if info is not None:
            mark(info.labels, reason)
    if isinstance(result, ChannelInfo):
        mark(result.labels, reason)


def _capture(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    try:
        return capture(model, (example,), leaf_types=WEIGHTED_LAYER_TYPES)
    except UntraceableConstruct as exc:
        where = f" at {exc.where}" if exc.where else ""
        raise GraphError(
            f"{type(model).__name__}.forward cannot be traced for the channel graph: {exc.construct}{where}",
            hint="control flow on tensor values is not supported; make it depend on shapes or module attributes, or move it out of forward",
        ) from exc


def trace(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    ignore: Iterable[str] = (),
    ui: UI | None = None,
) -> DependencyGraph:
    """The dependency graph of `model` at `input_shape` (model in eval mode; the model is not changed)."""
    ui = ui or quiet_ui()
    ignore = set(ignore)
    names = {name for name, _ in model.named_modules()} | {name for name, _ in model.named_parameters()}
    missing = sorted(i for i in ignore if i not in names)
    if missing:
        raise GraphError(f"--ignore {missing[0]} names no module of the model", hint="see `hadmc-deploy inspect` for module names")
    was_training = model.training
    model.eval()
    try:
        example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
        gm = _capture(model, example)
        state = LabelState()
        interp = _ChannelInterpreter(gm, state, ignore)
        try:
            with torch.no_grad():
                interp.run(example)
        except GraphError:
            raise
        except Exception as exc:
            raise GraphError(
                f"the model fails on an input of shape {tuple(input_shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                hint="pass the right --input-shape N,C,H,W",
            ) from exc
        join_training_branches(model, input_shape, gm, state, _capture_or_none, lambda train_gm, x: _interpret_training(train_gm, x, state, ignore))
    finally:
        model.train(was_training)
    for name in sorted(ignore):
        if name in dict(model.named_parameters()):
            for member in state.members:
                if member.tensor_name == name:
                    state.lock(member.labels, f"--ignore {name}")
    graph = build_graph(state, interp.drafts, tuple(input_shape), model)
    for w in graph.warnings:
        ui.warn(w)
    return graph


def _capture_or_none(model: nn.Module, example: torch.Tensor) -> fx.GraphModule | None:
    """The model's fx graph, or None where it does not trace (a training forward may want targets)."""
    try:
        return _capture(model, example)
    except GraphError:
        return None


def _interpret_training(train_gm: fx.GraphModule, example: torch.Tensor, state: LabelState, ignore: set[str]) -> None:
    """Follow the channels through the training-mode graph into `state` (`training_pass`)."""
    try:
        with torch.no_grad():
            _ChannelInterpreter(train_gm, state, ignore).run(example)
    except GraphError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise GraphError(f"the model fails in training mode on an input of shape {tuple(example.shape)}: {type(exc).__name__}: {first}") from exc
