"""Artifact directories are replaced whole: a build writes a staging directory beside the target and renames it.

Why: a failed or interrupted build must leave no half-written artifact, and a rebuild
must never read files an earlier build left in the same directory (a stale
calibration.cache would silently replace a fresh calibration).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hadmc_deploy.errors import ArtifactError

METADATA_FILE = "metadata.json"


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier artifact (or an empty directory)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).is_file())):
        raise ArtifactError(f"{out_dir} exists and is not an artifact directory", hint="choose an empty or new output directory")


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the finished staging directory to `out_dir`, replacing an earlier artifact only."""
    check_out_dir(out_dir)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


@contextmanager
def staging_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh empty directory beside `out_dir`; removed afterwards unless the caller moved it into place."""
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
