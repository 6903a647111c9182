"""Channel labels: the bookkeeping behind the dependency graph.

Every channel a layer produces is an *atom* (an integer). A tensor flowing
through the model carries, along its channel axes, the atoms its channels came
from (`ChannelInfo`). Ops that tie channels together (residual adds, SE muls,
channel-shuffle constraints) union atoms; a `ChannelGroup` is then a connected
set of producers, and each of its channels is one union-find class of atoms.

Working per channel rather than per layer is what lets concat (offset
mappings), split/chunk, channel shuffle (a permutation) and flatten -> Linear
(each channel owns H*W features) come out of one mechanism instead of one
special case each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnionFind:
    """Union-find over atom ids with path halving (atoms are allocated densely)."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # the older atom stays the root, so group leaders follow graph order
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        pairs = np.unique(np.stack([a.reshape(-1), b.reshape(-1)], axis=1), axis=0)
        for x, y in pairs:
            if x != y:
                self.union(int(x), int(y))


@dataclass
class ChannelInfo:
    """Which atoms a tensor's channel axes carry.

    `axes` are the tensor dims that index channels (usually `(1,)`; `(1, 2)` in
    the middle of a channel shuffle; `()` for a single broadcast channel);
    `labels` has the shape of those dims. Along every other dim the labels are
    constant.
    """

    axes: tuple[int, ...]
    labels: np.ndarray

    def flat(self) -> np.ndarray:
        return self.labels.reshape(-1)

    def full(self, shape: tuple[int, ...]) -> np.ndarray:
        """The labels broadcast to a tensor of `shape` (a view, no copy)."""
        view_shape = [1] * len(shape)
        for axis, size in zip(self.axes, self.labels.shape, strict=True):
            view_shape[axis] = size
        return np.broadcast_to(self.labels.reshape(view_shape), shape)


def info_from_full(full: np.ndarray) -> ChannelInfo | None:
    """Recover a `ChannelInfo` from a full label tensor, or None if channels mix with other dims."""
    if full.ndim == 0:
        return ChannelInfo((), full.reshape(()))
    axes = tuple(d for d in range(full.ndim) if full.shape[d] > 1 and not (full.max(axis=d) == full.min(axis=d)).all())
    index = tuple(slice(None) if d in axes else 0 for d in range(full.ndim))
    # np.array, not np.ascontiguousarray: that makes a single constant channel (all indices ints) 1-d
    labels = np.array(full[index], copy=True, order="C")
    info = ChannelInfo(axes, labels)
    if not np.array_equal(info.full(full.shape), full):
        return None  # e.g. pixel shuffle: a channel's identity depends on its position in space
    return info


@dataclass
class Source:
    """A producer of channels: a conv/linear output, a parameter, or the network input."""

    name: str
    kind: str  # "layer" | "param" | "input"
    start: int
    width: int


@dataclass
class Member:
    """One tensor axis whose slices follow a group's channels.

    `labels[i]` is the atom that slice i carries. `role` is "out" when zeroing
    the slice makes the channel exactly zero (weights producing it, norm affine
    parameters, layer scales), "in" when the slice consumes the channel.
    """

    module: str  # owning module's qualified name ("" for the root)
    attr: str  # parameter or buffer attribute on that module
    axis: int
    labels: np.ndarray
    role: str
    #: for grouped convs: each input position's conv group (slices are gathered per group)
    buckets: np.ndarray | None = None

    @property
    def tensor_name(self) -> str:
        return f"{self.module}.{self.attr}" if self.module else self.attr


@dataclass
class Partition:
    """A constraint: within each bucket, the kept counts stay proportional (equal-size buckets: equal)."""

    labels: np.ndarray  # atoms
    buckets: np.ndarray  # bucket id per atom (same length)
    mode: str  # "balanced" (chunk, grouped conv) | "blocks" (GroupNorm: keep or drop whole blocks)
    why: str


@dataclass
class LabelState:
    """Everything the tracer learns about channels, before it is turned into groups."""

    uf: UnionFind = field(default_factory=UnionFind)
    sources: list[Source] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    partitions: list[Partition] = field(default_factory=list)
    #: atom -> reason it must never be removed
    locked: dict[int, str] = field(default_factory=dict)
    #: atoms whose removal is not exactly function-preserving (LayerNorm over channels)
    inexact: dict[int, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def new_source(self, name: str, kind: str, width: int) -> np.ndarray:
        start = self.uf.add(width)
        self.sources.append(Source(name, kind, start, width))
        return np.arange(start, start + width, dtype=np.int64)

    def lock(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.unique(atoms.reshape(-1)):
            self.locked.setdefault(int(a), reason)

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.unique(atoms.reshape(-1)):
            self.inexact.setdefault(int(a), reason)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
