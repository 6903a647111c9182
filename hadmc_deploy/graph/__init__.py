"""Dependency graph of coupled channel groups (see `types` for the data, `trace` for how it is built)."""

from hadmc_deploy.graph.types import ChannelGroup, CostedLayer, DependencyGraph, WidthPlan

__all__ = ["ChannelGroup", "CostedLayer", "DependencyGraph", "WidthPlan"]
