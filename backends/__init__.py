"""Backend plugins. Each module registers itself with `@register`; heavy libraries load lazily."""

from hadmc_deploy.backends.base import (
    Artifact,
    Backend,
    BuildRequest,
    LatencyStats,
    OrtBuildOptions,
    TrtBuildOptions,
    available_backends,
    get,
    register,
)

__all__ = ["Artifact", "Backend", "BuildRequest", "LatencyStats", "OrtBuildOptions", "TrtBuildOptions", "available_backends", "get", "register"]
