"""NumPy's huge-page advice is switched off only where it alone decides, and never over the user's choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hadmc_deploy.hugepages import THP_DIR, advice_decides, avoid_huge_page_faults, selected


def _thp(tmp_path: Path, enabled: str, defrag: str) -> Path:
    (tmp_path / "enabled").write_text(enabled + "\n")
    (tmp_path / "defrag").write_text(defrag + "\n")
    return tmp_path


def test_the_selected_setting_is_read_from_its_brackets(tmp_path: Path) -> None:
    path = tmp_path / "setting"
    path.write_text("always defer defer+madvise [madvise] never\n")
    assert selected(path) == "madvise"
    path.write_text("garbled\n")
    assert selected(path) is None
    assert selected(tmp_path / "missing") is None


def test_advice_is_switched_off_only_where_it_decides_and_faults(tmp_path: Path) -> None:
    cases = {
        ("always [madvise] never", "always defer defer+madvise [madvise] never"): True,  # these machines
        ("always [madvise] never", "always defer [defer+madvise] madvise never"): True,
        ("always [madvise] never", "[always] defer defer+madvise madvise never"): True,
        ("always [madvise] never", "always [defer] defer+madvise madvise never"): False,  # khugepaged later, not at the fault
        ("[always] madvise never", "always defer defer+madvise [madvise] never"): False,  # huge pages whatever NumPy advises
        ("always madvise [never]", "always defer defer+madvise [madvise] never"): False,
    }
    for (enabled, defrag), expected in cases.items():
        thp = _thp(tmp_path, enabled, defrag)
        environ: dict[str, str] = {}
        assert avoid_huge_page_faults(thp, environ, modules={}) == expected == advice_decides(thp), (enabled, defrag)
        assert environ.get("NUMPY_MADVISE_HUGEPAGE") == ("0" if expected else None)


def test_the_users_choice_and_an_imported_numpy_are_left_alone(tmp_path: Path) -> None:
    thp = _thp(tmp_path, "always [madvise] never", "[madvise]")
    environ = {"NUMPY_MADVISE_HUGEPAGE": "1"}
    assert not avoid_huge_page_faults(thp, environ, modules={}) and environ["NUMPY_MADVISE_HUGEPAGE"] == "1"
    environ = {}
    assert not avoid_huge_page_faults(thp, environ, modules={"numpy": object()}) and not environ


def test_importing_the_package_first_reaches_numpy() -> None:
    """In a fresh interpreter, NumPy imported after the package follows what this machine's settings ask."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    code = "import hadmc_deploy, numpy; print(int(numpy._core.multiarray._get_madvise_hugepage()))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    if advice_decides(THP_DIR):
        assert out == "0"
    else:  # elsewhere NumPy keeps its own default
        assert out in ("0", "1")
