"""The build cache keys each stage on the source of every project module its stage module
imports: editing the knapsack reruns the search stage, editing an unrelated module does not.

Run on a temporary copy of the package (a plain folder layout on PYTHONPATH) so the edit never
touches the checkout, in a subprocess so the copy is what gets imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = (
    "from hadmc_deploy.build.pipeline import STAGES\n"
    "from hadmc_deploy.cache import code_hash\n"
    "import json, hadmc_deploy\n"
    "print(json.dumps({'file': hadmc_deploy.__file__, **{s.name: code_hash((s.module,)) for s in STAGES}}))\n"
)


def _copy_package(dest: Path) -> Path:
    pkg = dest / "hadmc_deploy"
    shutil.copytree(ROOT / "hadmc_deploy", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "backends", pkg / "backends", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "calibration", pkg / "calibration", ignore=shutil.ignore_patterns("__pycache__"))
    return pkg


def _keys(path: Path) -> dict[str, str]:
    import json

    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_editing_the_knapsack_reruns_the_search_stage_only_where_it_is_imported(tmp_path: Path) -> None:
    pkg = _copy_package(tmp_path)
    before = _keys(tmp_path)
    assert before["file"].startswith(str(tmp_path)), "the copy must be what is imported"
    with open(pkg / "search" / "knapsack.py", "a") as fh:
        fh.write("\n# an edit\n")
    after = _keys(tmp_path)
    assert after["search"] != before["search"]
    # the export stage never imports the search code: its key stays
    assert after["export"] == before["export"]
    with open(pkg / "triton.py", "a") as fh:
        fh.write("\n# an edit\n")
    third = _keys(tmp_path)
    assert third["search"] == after["search"] and third["decide"] != after["decide"]
