"""The project's own pruned-model checkpoint: loads without unpickling code.

Filled in by the pruning stage; see `save_pruned` / `load_pruned`.
"""

from __future__ import annotations

from typing import Any

from hadmc_deploy.errors import NotImplementedYetError


def load_pruned(obj: dict[str, Any], source: str):  # noqa: ANN201
    raise NotImplementedYetError(f"{source} is a pruned checkpoint, and loading those is not implemented yet")
