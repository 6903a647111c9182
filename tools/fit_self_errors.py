"""How far each table's context fit priced its own plans from what they measured: per table the
worst plan, then percentiles over all tables given (duplicates, the same fit copied, counted once).

    .venv/bin/python tools/fit_self_errors.py /tmp/run1 /tmp/run2/lut-demo-fp32-b1-wall.json ...

Why: the context fit carries each plan's profiled layers and adds one overhead for all plans
(latency/context.py), so a fit that misses one of its own plans says that plan's whole-model
rounds and its profile disagree. `context.SELF_FIT_TOLERANCE`, past which a plan is timed again,
was set from this distribution over the tables of earlier validation runs. With `--spreads`, each
table's stated spread (latency/stated_spread.py: the root mean square of its plans' spreads, with
the held-out misses where the table records them) beside the median of the same spreads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hadmc_deploy.latency.lut import read_table
from hadmc_deploy.latency.stated_spread import plan_spread, stated_spread


def tables(paths: list[Path]) -> list[Path]:
    """The table files named, and every lut-*.json under the directories named."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.rglob("lut-*.json")) if path.is_dir() else [path]
    return found


def worst_plan(table: dict) -> tuple[str, float] | None:
    """(plan, signed relative error of the fit's price for it) of the plan priced furthest from its
    measured time, or None when the table has no context fit with predictions."""
    rows = [r for r in ((table.get("context") or {}).get("fitted_on") or []) if r.get("predicted_ms") is not None and r.get("measured_ms")]
    if not rows:
        return None
    worst = max(rows, key=lambda r: abs(r["predicted_ms"] / r["measured_ms"] - 1.0))
    return worst["plan"], worst["predicted_ms"] / worst["measured_ms"] - 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="table files or directories holding them")
    parser.add_argument("--over", type=float, default=0.15, help="list the tables whose worst plan missed by more than this")
    parser.add_argument("--spreads", action="store_true", help="print each table's stated spread (root mean square and median over its plans)")
    args = parser.parse_args()
    seen, errors = set(), []
    for path in tables(args.paths):
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = worst_plan(table)
        fingerprint = json.dumps((table.get("context") or {}).get("fitted_on"), sort_keys=True)
        if found is None or fingerprint in seen:
            continue
        seen.add(fingerprint)
        errors.append(abs(found[1]))
        if args.spreads and (spread := stated_spread(read_table(path))) is not None:
            plans = [s for s in (plan_spread(r) for r in table["context"]["fitted_on"]) if s is not None]
            print(f"{path.name}: stated spread {spread:.1%} (median of its {len(plans)} plans {np.median(plans):.1%}), worst plan {found[0]} {found[1]:+.1%}")
        if abs(found[1]) > args.over:
            meta = table.get("meta", {})
            print(f"{path}: {meta.get('precision')} b{meta.get('batch')}, worst plan {found[0]} {found[1]:+.0%}")
    if not errors:
        raise SystemExit("fit_self_errors: no table with a context fit found")
    p = np.percentile(errors, [50, 90, 95, 99])
    print(f"{len(errors)} fits: worst plan's miss, median {p[0]:.1%}, 90th percentile {p[1]:.1%}, 95th {p[2]:.1%}, 99th {p[3]:.1%}, "
          f"{sum(e > args.over for e in errors)} over {args.over:.0%}")


if __name__ == "__main__":
    main()
