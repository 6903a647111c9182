"""Channel alignment: kept counts that hardware runs well (multiples of a target's `round_to`)."""

from __future__ import annotations

import math

from hadmc_deploy.graph.types import ChannelGroup, DependencyGraph


def round_width(width: int, keep: float, round_to: int = 1, granularity: int = 1, min_width: int = 1) -> int:
    """`keep` rounded to a legal count for a group of `width` channels.

    Counts are multiples of lcm(round_to, granularity) where the group is wide
    enough to hold two such steps; narrower groups only honour `granularity`
    (a 24-channel layer cannot keep multiples of 32). Never below `min_width`,
    never above `width`.
    """
    granularity = max(int(granularity), 1)
    step = math.lcm(max(int(round_to), 1), granularity)
    if width < 2 * step:
        step = granularity
    k = int(round(keep / step)) * step
    floor = max(min_width, step)
    floor = int(math.ceil(floor / granularity)) * granularity
    k = max(k, floor)
    if k >= width or abs(width - keep) < abs(k - keep):
        return width  # the full width is always legal, and here the nearest
    return k


def uniform_plan_keep(graph: DependencyGraph, ratio: float, round_to: int = 1, exact_only: bool = False) -> dict[str, int]:
    """Keep counts that remove `ratio` of every prunable group's channels."""
    keep: dict[str, int] = {}
    for g in graph.groups:
        if not g.prunable or (exact_only and not g.exact):
            continue
        keep[g.id] = round_width(g.width, g.width * (1.0 - ratio), round_to, g.granularity, g.min_width)
    return keep


def group_step(group: ChannelGroup, round_to: int = 1) -> int:
    """The step between legal kept counts of a group under `round_to`."""
    step = math.lcm(max(round_to, 1), max(group.granularity, 1))
    return step if group.width >= 2 * step else max(group.granularity, 1)
