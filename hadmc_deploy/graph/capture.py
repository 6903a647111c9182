"""Capture a model's forward as a `torch.fx` graph, running it on a real example as it goes.

Plain `fx.symbolic_trace` only sees proxies, so it refuses everyday Python whose
outcome is fixed by shapes: `list(x.chunk(2, 1))` (how many pieces?), `len(...)`,
`**outputs`, `if x.shape[1] != self.c:`. `ValueTracer` computes every node's real
value on the example input while tracing (the model runs once, eagerly, in program
order), so:

- iterating a proxy whose value is a tuple/list (chunk, split, unbind, a submodule
  returning a tuple) yields one `getitem` per element;
- `len()`, `int()`, `bool()`, `range()` on values derived only from shapes
  (`size()`, `.shape`, `dim()`, `numel()` and arithmetic on them) use the real
  number: the graph is specialised to the traced input shape, which is what the
  channel analysis needs (it runs at that shape);
- the same on a value computed from tensor *data* (`if x.sum() > 0`, `int(x.max())`)
  is data-dependent control flow: `UntraceableConstruct` names the construct and
  the user's source line.

Why not `torch.export`: it unrolls Python too, but lowers to ATen ops without
module boundaries; the channel rules work per module (which conv's weight, which
norm's statistics a channel slices), so every rule would have to be rebuilt on ATen
plus `nn_module_stack`. Keeping fx's module-level nodes keeps those rules as they
are; the value tracer adds only what the issue's constructs need. Static loops over
module lists, list building and `*args` already unroll under fx: the loop runs in
Python while tracing.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

_TORCH_DIR = os.path.dirname(torch.__file__)
_GRAPH_DIR = os.path.dirname(__file__)
#: metadata reads whose result depends only on shapes/dtypes, never on tensor data
_STATIC_METHODS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "element_size", "is_contiguous"})
#: the tensors the channel rules slice in a conv or linear layer
_LAYER_TENSORS = frozenset({"weight", "bias"})
_STATIC_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device", "requires_grad", "is_cuda", "layout"})


class UntraceableConstruct(Exception):
    """A construct the tracer cannot turn into a graph, with the user's source line that wrote it."""

    def __init__(self, construct: str, where: str) -> None:
        self.construct, self.where = construct, where
        super().__init__(f"{construct} at {where}" if where else construct)


def user_location(tb: Any = None) -> str:
    """`file:line: code` of the innermost frame outside torch and this package (the model's own code)."""
    frames = traceback.extract_tb(tb) if tb is not None else traceback.extract_stack()[:-1]
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if path.startswith(_TORCH_DIR) or path.startswith(_GRAPH_DIR):
            continue
        code = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
        return f"{os.path.basename(frame.filename)}:{frame.lineno}: {code}"
    return ""


@dataclass
class _Value:
    value: Any
    static: bool  # derived only from shapes / metadata (never from tensor data)


class ValueProxy(fx.Proxy):
    """An fx proxy that knows its real value on the example input (see the module docstring)."""

    def _known(self) -> _Value:
        return self.tracer.value_of(self.node)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name in _STATIC_ATTRIBUTES:  # `x.shape` as a node now, so len()/iteration of it see its value
            return self.tracer.create_proxy("call_function", getattr, (self, name), {})
        return super().__getattr__(name)

    def __len__(self) -> int:
        known = self._known()
        if isinstance(known.value, (list, tuple, dict, torch.Size)) or known.static or isinstance(known.value, torch.Tensor):
            return len(known.value)
        raise UntraceableConstruct(f"len() of a {type(known.value).__name__}", user_location())

    def __index__(self) -> int:
        return int(self._concrete("an integer"))

    def __int__(self) -> int:
        return int(self._concrete("int()"))

    def __float__(self) -> float:
        return float(self._concrete("float()"))

    def _concrete(self, what: str) -> Any:
        known = self._known()
        if not known.static:
            raise UntraceableConstruct(f"{what} of a value computed from tensor data", user_location())
        return known.value


class ValueTracer(fx.Tracer):
    """`fx.Tracer` that evaluates each node on `example` as it records it."""

    def __init__(self, example: tuple[Any, ...], leaf_types: tuple[type, ...] = (), opaque_functions: tuple[Any, ...] = ()) -> None:
        super().__init__(autowrap_functions=opaque_functions)
        self._examples = list(example)
        self._leaf_types = leaf_types
        self._values: dict[fx.Node, _Value] = {}
        #: True while a node is being evaluated: modules then run eagerly and attributes are plain values
        self._evaluating = False

    # -- what makes the tracer value-aware ----------------------------------------------------
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ValueProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str | None = None,
                     type_expr: Any | None = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self._evaluating = True
        try:
            self._values[proxy.node] = self._evaluate(proxy.node)
        finally:
            self._evaluating = False
        return proxy

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._evaluating:  # a leaf module running on real tensors (e.g. its own submodules)
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or is_subclass_leaf(m, self._leaf_types)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def value_of(self, node: fx.Node) -> _Value:
        if node not in self._values and node.op == "get_attr":
            # a buffer used in arithmetic (`(x - self.mean) / self.std`): fx's `create_arg` adds its
            # get_attr node with `create_node`, not through `create_proxy`, so it is evaluated here
            self._values[node] = self._evaluate(node)
        return self._values[node]

    def to_bool(self, obj: fx.Proxy) -> bool:
        known = self.value_of(obj.node)
        if not known.static:
            raise UntraceableConstruct("a branch (if/while/and/or/assert) on a value computed from tensor data", user_location())
        return bool(known.value)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        value = self.value_of(obj.node).value
        if isinstance(value, (list, tuple, torch.Size)):
            return iter([obj[i] for i in range(len(value))])
        raise UntraceableConstruct(f"iterating over a {type(value).__name__} (a loop over tensor rows)", user_location())

    def keys(self, obj: fx.Proxy) -> Any:
        value = self.value_of(obj.node).value
        if isinstance(value, dict):
            return list(value.keys())
        return super().keys(obj)

    # -- evaluation ---------------------------------------------------------------------------
    def _evaluate(self, node: fx.Node) -> _Value:
        if node.op == "placeholder":
            return _Value(self._placeholder_value(node), False)
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return _Value(value, not isinstance(value, torch.Tensor))
        args = fx.node.map_arg(node.args, lambda n: self.value_of(n).value)
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.value_of(n).value)
        inputs = [self.value_of(n) for n in node.all_input_nodes]
        if node.op == "call_module":
            return _Value(self.root.get_submodule(str(node.target))(*args, **kwargs), False)
        if node.op == "call_method":
            value = getattr(args[0], str(node.target))(*args[1:], **kwargs)
            static = str(node.target) in _STATIC_METHODS or (not isinstance(value, torch.Tensor) and all(i.static for i in inputs))
            return _Value(value, static)
        value = node.target(*args, **kwargs)  # type: ignore[operator]
        if node.target is getattr and len(args) > 1 and args[1] in _STATIC_ATTRIBUTES:
            return _Value(value, True)
        return _Value(value, not isinstance(value, torch.Tensor) and all(i.static for i in inputs))

    def _placeholder_value(self, node: fx.Node) -> Any:
        name = str(node.target)
        if name.startswith("**"):
            return {}
        if name.startswith("*"):
            rest, self._examples = tuple(self._examples), []
            return rest
        if self._examples:
            return self._examples.pop(0)
        return node.args[0] if node.args else None


def is_subclass_leaf(m: nn.Module, leaf_types: tuple[type, ...]) -> bool:
    """A user subclass of a layer the channel rules know (timm's `Conv2dSame`, BiT's `StdConv2d`: a
    `Conv2d` whose forward pads or standardises its weight) with no parameters or submodules of its
    own: kept whole, so the layer's rule slices its weight. One with more (a LoRA linear's extra
    matrices) is traced through: a rule that sliced only the base tensors would break it."""
    if type(m) in leaf_types or not isinstance(m, leaf_types) or type(m).__module__.startswith("torch."):
        return False
    own = {name for name, _ in m.named_parameters(recurse=False)} | {name for name, _ in m.named_buffers(recurse=False)}
    return not list(m.children()) and own <= _LAYER_TENSORS


@contextlib.contextmanager
def opaque_scripted_functions(model: nn.Module) -> Iterator[tuple[Any, ...]]:
    """While tracing, each `torch.jit.script` function a forward calls by a global name is replaced by
    a plain Python function calling it, which fx records as one opaque call (autowrap): a proxy
    cannot enter TorchScript ("Expected a value of type 'Tensor' ... found type 'ValueProxy'"), and
    fx cannot record the ScriptFunction itself (its code generation names it
    'torch.jit.ScriptFunction', which breaks every later trace in the process)."""
    patched: list[tuple[dict[str, Any], str, Any]] = []
    wrappers: dict[int, Any] = {}
    scopes = {id(scope): scope for module in model.modules() if (scope := getattr(type(module).forward, "__globals__", None)) is not None}
    for scope in scopes.values():
        for name, value in list(scope.items()):
            if isinstance(value, torch.jit.ScriptFunction):
                if id(value) not in wrappers:
                    wrappers[id(value)] = _calling(value)
                patched.append((scope, name, value))
                scope[name] = wrappers[id(value)]
    try:
        yield tuple(wrappers.values())
    finally:
        for scope, name, value in reversed(patched):
            scope[name] = value


def _calling(function: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"torchscript_{function.name}"
    call.scripted = function  # type: ignore[attr-defined]
    return call


def capture(model: nn.Module, example: tuple[Any, ...], leaf_types: tuple[type, ...] = ()) -> fx.GraphModule:
    """The fx graph of `model.forward` as it runs on `example` (raises `UntraceableConstruct`);
    user subclasses of `leaf_types` stay whole (`is_subclass_leaf`)."""
    with torch.no_grad(), opaque_scripted_functions(model) as opaque:
        tracer = ValueTracer(example, leaf_types, opaque)
        try:
            graph = tracer.trace(model)
        except UntraceableConstruct:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise UntraceableConstruct(f"{type(exc).__name__}: {first}", user_location(exc.__traceback__)) from exc
    name = model.__class__.__name__
    return fx.GraphModule(tracer.root, graph, name)
