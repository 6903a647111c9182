"""NumPy's huge-page advice switched off where it makes page faults stall.

NumPy marks every array of 4 MB or more MADV_HUGEPAGE. Where the kernel's transparent
huge page defrag setting is `madvise` or `defer+madvise`, a fault in such a region with no huge
page free runs a synchronous reclaim and compaction instead of falling back to a 4 KB page
(numpy/numpy#31590). On the machines here (defrag `madvise`, memory fragmented after hours of
uptime, `AnonHugePages: 0 kB`) that made fresh memory cost about 13 ms per MB: loading 1,408
Fashion-MNIST images resized to 3x224x224 for a ResNet-18 build took 11.6-16.9 s with the
advice and 1.9 s without (`NUMPY_MADVISE_HUGEPAGE=1|0`, the same load). NumPy reads its switch,
the NUMPY_MADVISE_HUGEPAGE environment variable, once, when it is first imported: this runs from
the package's `__init__`, before anything imports NumPy, and leaves a value the user set alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

DEFRAG_SETTING = Path("/sys/kernel/mm/transparent_hugepage/defrag")
#: defrag settings under which a fault in a MADV_HUGEPAGE region compacts synchronously
STALLING_DEFRAG = ("madvise", "defer+madvise")


def selected_defrag(path: Path = DEFRAG_SETTING) -> str | None:
    """The bracketed choice of the kernel's THP defrag setting ("always defer [madvise] never" -> "madvise")."""
    try:
        text = path.read_text()
    except OSError:  # not Linux, or no THP
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def avoid_compaction_stalls(path: Path = DEFRAG_SETTING, environ: MutableMapping[str, str] = os.environ,
                            modules: Mapping[str, object] = sys.modules) -> bool:
    """Tell NumPy not to advise huge pages where that stalls (see the module docstring); True when set."""
    if "numpy" in modules or "NUMPY_MADVISE_HUGEPAGE" in environ:
        return False  # too late to matter, or the user chose
    if selected_defrag(path) not in STALLING_DEFRAG:
        return False
    environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    return True
