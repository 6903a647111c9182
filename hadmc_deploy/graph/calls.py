"""A module called more than once in one forward: the channels its calls share, or lock.

Why a module of its own: every leaf rule with weights (conv, linear, norms) asks the same two
questions of a call, whether the module was called before and whether this call can share that
call's slicing, and the answers live in the trace state between calls.
"""

from __future__ import annotations

import numpy as np

from hadmc_deploy.graph.rules import RuleContext


def check_reuse(ctx: RuleContext) -> bool:
    """Whether the module was called before, for a call that cannot share the first call's slicing
    (`shared_call`: another channel count or layout, a linear or a norm other than BatchNorm): two
    call sites would need two slicings, so such a module stays whole. The caller locks this call's channels; the channels its earlier calls tied to the module's
    tensors (`remember_call`) are locked here: a conv applied to its own output had its first
    input's channels pruned (weight sliced to 48 inputs) while its output stayed 64 wide."""
    calls = ctx.state.__dict__.setdefault("_calls", {})
    calls[ctx.module_name] = calls.get(ctx.module_name, 0) + 1
    if calls[ctx.module_name] == 1:
        return False
    for labels in ctx.state.__dict__.setdefault("_call_labels", {}).pop(ctx.module_name, []):
        ctx.state.lock(labels, f"module {ctx.module_name} is called more than once")
    return True


def remember_call(ctx: RuleContext, *labels: np.ndarray | None) -> None:
    """The channels this call ties to the module's tensors, locked should the module be called again."""
    store = ctx.state.__dict__.setdefault("_call_labels", {})
    store.setdefault(ctx.module_name, []).extend(a for a in labels if a is not None and a.size)


def shared_call(ctx: RuleContext, in_labels: np.ndarray | None) -> np.ndarray | None:
    """The first call's output channels when this module is called again on as many channels laid out
    alike (a head shared by the levels of a feature pyramid, a conv applied to its own output): the
    calls' inputs are tied, so one slicing serves every call, and this call's output is the first's.
    None on a first call, or a call that cannot share (`check_reuse` then locks every call's channels)."""
    first = ctx.state.__dict__.setdefault("_first_call", {}).get(ctx.module_name)
    if first is None or in_labels is None or first[0].size != in_labels.size:
        return None
    ctx.state.uf.union_arrays(first[0], in_labels)
    return first[1]


def first_call(ctx: RuleContext, in_labels: np.ndarray | None, out_labels: np.ndarray) -> None:
    """Keep a first call's channels for `shared_call`."""
    if in_labels is not None:
        ctx.state.__dict__.setdefault("_first_call", {}).setdefault(ctx.module_name, (in_labels, out_labels))


#: the trace-state entries this module keeps between calls
_CALL_STATE_KEYS = ("_calls", "_call_labels", "_first_call")


def forget_calls(state: object) -> None:
    """Start counting calls afresh: a second pass over another graph of the same model (its training
    forward, `training_pass`) calls each module again without reusing it."""
    for key in _CALL_STATE_KEYS:
        state.__dict__.pop(key, None)
