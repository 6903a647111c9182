"""NumPy's huge-page advice is switched off only where the kernel stalls on it, and never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hadmc_deploy.hugepages import avoid_compaction_stalls, selected_defrag


def _defrag(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "defrag"
    path.write_text(text)
    return path


def test_the_selected_defrag_setting_is_read_from_its_brackets(tmp_path: Path) -> None:
    assert selected_defrag(_defrag(tmp_path, "always defer defer+madvise [madvise] never\n")) == "madvise"
    assert selected_defrag(_defrag(tmp_path, "always defer [defer+madvise] madvise never\n")) == "defer+madvise"
    assert selected_defrag(_defrag(tmp_path, "garbled\n")) is None
    assert selected_defrag(tmp_path / "missing") is None


def test_advice_is_switched_off_only_where_a_fault_would_compact(tmp_path: Path) -> None:
    for setting, expected in (("[madvise]", "0"), ("[defer+madvise]", "0"), ("[defer]", None), ("[never]", None), ("[always]", None)):
        environ: dict[str, str] = {}
        changed = avoid_compaction_stalls(_defrag(tmp_path, f"always defer {setting}"), environ, modules={})
        assert changed == (expected is not None) and environ.get("NUMPY_MADVISE_HUGEPAGE") == expected, setting


def test_the_users_choice_and_an_imported_numpy_are_left_alone(tmp_path: Path) -> None:
    stalling = _defrag(tmp_path, "always defer [madvise] never")
    environ = {"NUMPY_MADVISE_HUGEPAGE": "1"}
    assert not avoid_compaction_stalls(stalling, environ, modules={}) and environ["NUMPY_MADVISE_HUGEPAGE"] == "1"
    environ = {}
    assert not avoid_compaction_stalls(stalling, environ, modules={"numpy": object()}) and not environ


def test_importing_the_package_first_reaches_numpy() -> None:
    """In a fresh interpreter, NumPy imported after the package follows what this machine's setting asks."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    code = "import hadmc_deploy, numpy; print(int(numpy._core.multiarray._get_madvise_hugepage()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    stalls = selected_defrag() in ("madvise", "defer+madvise")
    assert out == ("0" if stalls else out)  # elsewhere NumPy keeps its own default
