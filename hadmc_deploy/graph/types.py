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
    # -- added by the graph module --
    #: False when removing channels changes the others slightly (LayerNorm over channels):
    #: still prunable, but not exactly function-preserving.
    exact: bool = True
    #: per channel, the cell it belongs to when kept counts must stay proportional per cell
    #: (grouped convs, chunk/split pieces: "balanced") or whole cells go ("blocks": GroupNorm).
    cells: list[int] | None = None
    cell_mode: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "width": self.width,
            "prunable": self.prunable,
            "reason": self.reason,
            "members": self.members,
            "granularity": self.granularity,
            "min_width": self.min_width,
            "exact": self.exact,
            "cell_mode": self.cell_mode,
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
    # -- added by the graph module --
    #: exact input/output composition: (group id, positions this layer sees, the group's full
    #: width). Concat, split and channel shuffle see parts of groups; when present these
    #: terms take precedence (positions scale with the group's kept fraction).
    in_terms: tuple[tuple[str, int, int], ...] = ()
    out_terms: tuple[tuple[str, int, int], ...] = ()
    #: the module (or fx node) name the layer comes from
    module: str = ""

    def spec_at(self, widths: dict[str, int]) -> LayerSpec:
        if self.in_terms or self.out_terms:
            in_ch = _scaled(self.in_terms, widths, self.spec.in_channels)
            out_ch = _scaled(self.out_terms, widths, self.spec.out_channels)
            if self.spec.op == "dwconv":
                return self.spec.with_channels(in_ch, in_ch)
            return self.spec.with_channels(in_ch, out_ch)
        in_ch = self.spec.in_channels
        if self.in_groups and all(g in widths for g in self.in_groups):
            in_ch = sum(widths[g] for g in self.in_groups) * self.in_multiplier
        out_ch = self.spec.out_channels
        if self.out_group is not None and self.out_group in widths:
            out_ch = widths[self.out_group]
        if self.spec.op == "dwconv":
            return self.spec.with_channels(in_ch, in_ch)
        return self.spec.with_channels(in_ch, out_ch)


def _scaled(terms: tuple[tuple[str, int, int], ...], widths: dict[str, int], default: int) -> int:
    if not terms:
        return default
    total = 0
    for group_id, positions, full in terms:
        width = widths.get(group_id, full)
        total += positions if width >= full else max(1, round(positions * width / full)) if width > 0 else 0
    return max(total, 1)


@dataclass
class DependencyGraph:
    groups: list[ChannelGroup]
    layers: list[CostedLayer]
    input_shape: tuple[int, ...]
    warnings: list[str] = field(default_factory=list)
    # -- added by the graph module --
    #: every tensor axis that follows channels (`hadmc_deploy.graph.build.TensorAxis`), for surgery
    #: and importance; not JSON (numpy index arrays)
    axes: list[Any] = field(default_factory=list)
    #: qualified module name -> class name, for the modules the graph touched
    module_types: dict[str, str] = field(default_factory=dict)

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
