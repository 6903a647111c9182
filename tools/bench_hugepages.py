"""What NumPy's huge-page advice costs here: fresh memory and a build's calibration load, with it and without.

    .venv/bin/python tools/bench_hugepages.py [--repeats 2] [--images 1408]

Why: `hadmc_deploy/hugepages.py` switches NumPy's MADV_HUGEPAGE advice off where the kernel gives
huge pages only on advice. Each case runs in a fresh interpreter with NUMPY_MADVISE_HUGEPAGE=1 and
=0 alternately (NumPy reads it once, at import): the first touch of a 256 MB array, and loading
Fashion-MNIST's training images resized to 3x224x224 as a ResNet-18 build does (`load_data`), with
the kernel's THP settings and /proc/vmstat's huge-page fault and compaction-stall counts around it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, time
import numpy as np
what, images = sys.argv[1], int(sys.argv[2])
if what == "touch":
    start = time.perf_counter()
    np.ones(1 << 26, np.float32)  # 256 MB, first touch
else:
    from hadmc_deploy.data import Preprocess, load_data
    start = time.perf_counter()
    load_data("builtin:fashion-mnist:train", Preprocess(resize=(224, 224), channels=3), limit=images)
print(f"{time.perf_counter() - start:.2f}")
"""


def vmstat() -> dict[str, int]:
    try:
        rows = (line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        return {k: int(v) for k, v in rows if k in ("thp_fault_alloc", "compact_stall")}
    except OSError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=1408, help="images loaded (1,408: 128 ranges + 1,280 beyond, a build's cap)")
    args = parser.parse_args()
    for name in ("enabled", "defrag"):
        path = Path("/sys/kernel/mm/transparent_hugepage") / name
        print(f"THP {name}: {path.read_text().strip() if path.exists() else 'n/a'}")
    for what in ("touch", "load"):
        for i in range(args.repeats):
            for advice in ("1", "0"):
                before = vmstat()
                env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": advice}
                out = subprocess.run([sys.executable, "-c", CHILD, what, str(args.images)], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
                after = vmstat()
                counts = ", ".join(f"{k} +{after[k] - before.get(k, 0)}" for k in after)
                label = "256 MB first touch" if what == "touch" else f"load {args.images} images at 3x224x224"
                print(f"{label}, NUMPY_MADVISE_HUGEPAGE={advice}, run {i + 1}: {out.stdout.strip()} s ({counts})", flush=True)


if __name__ == "__main__":
    main()
