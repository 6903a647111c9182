"""Plain data passed between the graph, importance, latency model, search and surgery.

These types are the contract between stages. Fields may be added; existing
fields keep their meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hadmc_deploy.specs import LayerSpec


@dataclass
class ChannelGroup:
    """A set of coupled channel slots that must be kept or removed together.

    `members` lists (module or parameter name, axis, index mapping) entries; the
    mapping's exact form belongs to the graph module. `width` is the current
    channel count. A group that must not be pruned says why in `reason`.
    """

    id: str
    width: int
    prunable: bool
    reason: str = ""
    members: list[dict[str, Any]] = field(default_factory=list)
    #: kept counts must be a multiple of this (GroupNorm groups, grouped convs);
    #: the target's alignment (`round_to`) is applied on top by the search.
    granularity: int = 1
    #: the smallest count the group may keep (never remove a whole layer unless asked).
    min_width: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "width": self.width,
            "prunable": self.prunable,
            "reason": self.reason,
            "members": self.members,
            "granularity": self.granularity,
            "min_width": self.min_width,
        }


@dataclass
class CostedLayer:
    """One node whose latency the model costs, tied to the groups that size it.

    in_channels = sum(width of g for g in in_groups) * in_multiplier
    (in_multiplier is H*W for flatten -> Linear); out_channels = width of out_group.
    A `None` group means the dimension is fixed (the network input, the classes).
    """

    name: str
    spec: LayerSpec
    in_groups: tuple[str, ...] = ()
    out_group: str | None = None
    in_multiplier: int = 1

    def spec_at(self, widths: dict[str, int]) -> LayerSpec:
        in_ch = self.spec.in_channels
        if self.in_groups and all(g in widths for g in self.in_groups):
            in_ch = sum(widths[g] for g in self.in_groups) * self.in_multiplier
        out_ch = self.spec.out_channels
        if self.out_group is not None and self.out_group in widths:
            out_ch = widths[self.out_group]
        if self.spec.op == "dwconv":
            return self.spec.with_channels(in_ch, in_ch)
        return self.spec.with_channels(in_ch, out_ch)


@dataclass
class DependencyGraph:
    groups: list[ChannelGroup]
    layers: list[CostedLayer]
    input_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)

    def group(self, group_id: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def full_widths(self) -> dict[str, int]:
        return {g.id: g.width for g in self.groups}

    def layer_specs(self, widths: dict[str, int] | None = None) -> list[LayerSpec]:
        """Every costed layer's spec at the given widths (default: the model as it is)."""
        merged = self.full_widths()
        if widths:
            merged.update(widths)
        return [layer.spec_at(merged) for layer in self.layers]


@dataclass
class WidthPlan:
    """How many (and optionally which) channels each group keeps. JSON round-trips.

    `keep` maps group id -> kept count; `indices` (optional) maps group id -> the
    kept channel indices in the original model, sorted. A plan replays on a
    fresh model of the same architecture.
    """

    keep: dict[str, int]
    indices: dict[str, list[int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"keep": self.keep, "indices": self.indices, "meta": self.meta}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> WidthPlan:
        data = json.loads(text)
        return cls(
            keep={k: int(v) for k, v in data["keep"].items()},
            indices={k: [int(i) for i in v] for k, v in data.get("indices", {}).items()},
            meta=data.get("meta", {}),
        )
