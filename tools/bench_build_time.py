"""Wall time and stage times of issue 13's ResNet-18 build, for one or two checkouts side by side.

    .venv/bin/python tools/bench_build_time.py [--repeats 2] [--compare OTHER_CHECKOUT] [--repeat-speedup 2.4] [--json OUT]

Why: issue 13 asks a whole `build` of a random-weight ResNet-18 at 224x224 with its latency table
(`--speedup 2 --measure-lut`, 128 calibration images) to take about 45 s. Build times here move
20-30% with the machine, so a change is judged side by side: with `--compare`, the other checkout
(for example `git worktree add /tmp/old <commit>`) builds in turn with this one, alternately, each
with an empty cache. Every build runs in a fresh process with this repository's interpreter and
imports `hadmc_deploy` and its `backends`/`calibration` subpackages from its own checkout (an
import hook placed before the editable install's, which maps all three to this repository: the
checkout's directory first on the path redirected only `hadmc_deploy` itself; the first A/B in
docs/latency_model.md is unaffected, its two sides had the same calibration/ and backends/). The
stage times are the builds' report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD_ARGS = ["--arch", "hadmc_deploy.models.resnet:resnet18", "--input-shape", "1,3,224,224", "--target", "cpu", "--speedup", "2",
              "--measure-lut", "--calib", "builtin:fashion-mnist:train", "--calib-samples", "128"]


def random_resnet18(path: Path) -> Path:
    """The random-weight ResNet-18 state_dict the docs build (seed 0)."""
    code = ("import sys, torch; from hadmc_deploy.models.resnet import resnet18; "
            "torch.manual_seed(0); torch.save(resnet18().state_dict(), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True)
    return path


#: run in the child before anything is imported: the three packages, and every module under them,
#: come from the checkout named by argv[1] (then `python -m hadmc_deploy` with the rest of argv)
CHECKOUT_IMPORTS = """
import runpy, sys
from importlib.machinery import PathFinder
from importlib.util import spec_from_file_location
root = sys.argv.pop(1)
packages = {"hadmc_deploy": root + "/hadmc_deploy", "hadmc_deploy.backends": root + "/backends",
            "hadmc_deploy.calibration": root + "/calibration"}
class CheckoutFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in packages:
            return spec_from_file_location(name, packages[name] + "/__init__.py", submodule_search_locations=[packages[name]])
        if name.startswith("hadmc_deploy.") and path is not None:
            return PathFinder.find_spec(name, path)
        return None
sys.meta_path.insert(0, CheckoutFinder)
runpy.run_module("hadmc_deploy", run_name="__main__", alter_sys=True)
"""


def checkout_files(checkout: Path) -> list[str]:
    """Where a child started with CHECKOUT_IMPORTS imports its three packages from (checked before each build)."""
    code = CHECKOUT_IMPORTS.replace('runpy.run_module("hadmc_deploy", run_name="__main__", alter_sys=True)',
                                    "import hadmc_deploy.backends, hadmc_deploy.calibration.observers as o; print(hadmc_deploy.__file__, hadmc_deploy.backends.__file__, o.__file__)")
    out = subprocess.run([sys.executable, "-c", code, str(checkout)], capture_output=True, text=True, check=True).stdout.split()
    return out


def one_build(checkout: Path, model: Path, work: Path, label: str, *, cache_label: str | None = None, speedup: str | None = None) -> dict:
    out, cache = work / f"{label}-out", work / f"{cache_label or label}-cache"
    env = {**os.environ, "HADMC_CACHE": str(cache)}
    args = BUILD_ARGS if speedup is None else [*BUILD_ARGS[: BUILD_ARGS.index("--speedup") + 1], speedup, *BUILD_ARGS[BUILD_ARGS.index("--speedup") + 2 :]]
    imported = checkout_files(checkout)
    if not all(path.startswith(str(checkout) + "/") for path in imported):
        raise SystemExit(f"bench_build_time: {checkout} would import {imported}, not its own packages")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHECKOUT_IMPORTS, str(checkout), "build", str(model), *args, "--out", str(out)],
                          cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = out / "report.json"
    stages = json.loads(report.read_text()).get("stages", []) if report.is_file() else []
    return {"checkout": str(checkout), "label": label, "speedup": speedup or BUILD_ARGS[BUILD_ARGS.index("--speedup") + 1],
            "cache": "reused" if cache_label else "empty", "exit_code": proc.returncode, "wall_s": round(wall, 1),
            "stages_s": [[s["name"], round(float(s["seconds"]), 1)] for s in stages if s.get("seconds") is not None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compare", type=Path, help="another checkout, built alternately with this one (it runs first)")
    parser.add_argument("--repeat-speedup", help="after each build, another with its cache at this --speedup")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    checkouts = [args.compare.resolve(), ROOT] if args.compare else [ROOT]
    rows = []
    with tempfile.TemporaryDirectory(prefix="hadmc-buildtime-") as tmp:
        work = Path(tmp)
        model = random_resnet18(work / "r18.pth")
        for i in range(args.repeats):
            for n, checkout in enumerate(checkouts):
                label = f"{n}-{i}"
                builds = [one_build(checkout, model, work, label)]
                if args.repeat_speedup:
                    builds.append(one_build(checkout, model, work, f"{label}-again", cache_label=label, speedup=args.repeat_speedup))
                for row in builds:
                    rows.append(row)
                    stages = ", ".join(f"{name} {s}" for name, s in row["stages_s"])
                    print(f"{checkout}  run {i + 1} (--speedup {row['speedup']}, {row['cache']} cache): exit {row['exit_code']}, {row['wall_s']} s wall; {stages}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": "hadmc-deploy build r18.pth " + " ".join(BUILD_ARGS), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
