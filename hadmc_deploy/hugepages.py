"""NumPy's huge-page advice switched off where it alone decides whether arrays get huge pages.

NumPy marks every array of 4 MB or more MADV_HUGEPAGE. Where the kernel's transparent huge pages
are `enabled` only on advice (`madvise`) and its `defrag` setting allocates them when a fault asks
(`always`, `madvise`, `defer+madvise`), that advice makes each first touch of such an array fault
in 2 MB pages. On the machines here (a VM) those faults are slow when the pages are fresh: a 256 MB
array took 2.3-3.2 s to fill with the advice and 0.12-0.16 s without (0.09 s with it once, right after
another process had freed its huge pages), /proc/vmstat counting 127 huge-page faults and no
compaction stall (so it is the faults themselves, not the compaction numpy/numpy#31590 describes for
the same settings); loading 1,408 Fashion-MNIST images resized to 3x224x224 for a ResNet-18 build
took 5.6-9.4 s with the advice and 2.1-2.2 s without (`tools/bench_hugepages.py`, 2026-12-02; a
scratch run earlier that day: 11.6-16.9 s and 1.9 s).
Where huge pages do pay, NumPy's own benchmarks gained 25-40% on large copies: the loss here is
far larger, so the advice is off by default on such kernels and `NUMPY_MADVISE_HUGEPAGE=1` brings
it back. NumPy reads that variable once, when it is first imported: this runs from the package's
`__init__`, before anything imports NumPy, and leaves a value the user set alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

THP_DIR = Path("/sys/kernel/mm/transparent_hugepage")
#: defrag settings under which a fault in an advised region allocates a huge page there and then
FAULTING_DEFRAG = ("always", "madvise", "defer+madvise")


def selected(path: Path) -> str | None:
    """The bracketed choice of a THP setting file ("always defer [madvise] never" -> "madvise")."""
    try:
        text = path.read_text()
    except OSError:  # not Linux, or no THP
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def advice_decides(thp_dir: Path = THP_DIR) -> bool:
    """Huge pages only where advised, allocated at the advised fault: NumPy's advice is what gives its arrays huge pages."""
    return selected(thp_dir / "enabled") == "madvise" and selected(thp_dir / "defrag") in FAULTING_DEFRAG


def avoid_huge_page_faults(thp_dir: Path = THP_DIR, environ: MutableMapping[str, str] = os.environ,
                           modules: Mapping[str, object] = sys.modules) -> bool:
    """Tell NumPy not to advise huge pages where its advice alone decides (see the module docstring); True when set."""
    if "numpy" in modules or "NUMPY_MADVISE_HUGEPAGE" in environ:
        return False  # too late to matter, or the user chose
    if not advice_decides(thp_dir):
        return False
    environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    return True
