"""One line per run of issue 13's checks: how far two tables' predictions were apart, and the
unaligned `prune --ratio` plans' errors, from the JSON that `tools/validate_latency_model.py
--issue --json OUT` writes (or an A/B file holding lists of them under named keys).

    .venv/bin/python tools/issue13_pairs.py docs/latency_issue_v16_ab.json
    .venv/bin/python tools/issue13_pairs.py docs/latency_issue_v15.json docs/latency_issue_v14.json

Why: a pair of tables differs both by a level (the machine ran faster or slower for one of them:
every plan moves alike) and by each plan's own noise; the columns separate the two: "apart" is
the largest difference of a plan's prediction (issue 13's criterion, 5%), "speedups" the largest
difference of a plan's predicted speedup over the full model (the level cancels), "scatter" the
range of the plans' differences (how unevenly the plans moved).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def runs_of(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, one validation run's results) in the file: a run itself, or lists of runs by key."""
    data = json.loads(path.read_text())
    if "issue" in data:
        return [(path.stem, data)]
    return [(f"{key}{i + 1}", run) for key, value in data.items() if isinstance(value, list) for i, run in enumerate(value) if isinstance(run, dict) and "issue" in run]


def describe(run: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per precision: apart, speedups, scatter (two tables) and ratio0.3 / ratio0.6 errors."""
    out: dict[str, dict[str, float]] = {}
    for item in run["issue"]:
        row = out.setdefault(item["precision"], {})
        if "max_abs_diff_pct" in item:
            diffs = list(item["diff_pct"].values())
            row.update(apart=item["max_abs_diff_pct"], speedups=item["max_abs_ratio_diff_pct"], scatter=max(diffs) - min(diffs))
        else:
            row.update({r["plan"]: r["lut_err_pct"] for r in item["rows"] if r["plan"].startswith("ratio")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | precision | two tables apart | speedups apart | scatter | ratio0.3 error | ratio0.6 error |")
    print("|---|---|---:|---:|---:|---:|---:|")
    columns: dict[tuple[str, str], list[dict[str, float]]] = {}
    for path in args.json:
        for label, run in runs_of(path):
            for precision, row in describe(run).items():
                print(f"| {label} | {precision} | {row.get('apart', float('nan')):.1f}% | {row.get('speedups', float('nan')):.1f}% | {row.get('scatter', float('nan')):.1f} "
                      f"| {row.get('ratio0.3', float('nan')):+.1f}% | {row.get('ratio0.6', float('nan')):+.1f}% |")
                if "apart" in row:
                    columns.setdefault((label.rstrip("0123456789"), precision), []).append(row)
    print()
    for (group, precision), rows in sorted(columns.items()):
        def median(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)
        within = sum(r["apart"] <= 5.0 for r in rows)
        print(f"{group or 'all'} {precision}: two tables apart median {median('apart'):.1f}% ({within} of {len(rows)} within 5%), "
              f"speedups apart median {median('speedups'):.1f}%, scatter median {median('scatter'):.1f}")


if __name__ == "__main__":
    main()
