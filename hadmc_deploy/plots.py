"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.fileio import atomic_path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_widths(width_plan: list[dict[str, Any]], path: Path) -> Path:
    """Per-group widths before and after the search, as paired bars."""
    plt = _pyplot()
    names = [g["group"] for g in width_plan]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names) + 2), 4.0))
    ax.bar([x - 0.2 for x in xs], [g["before"] for g in width_plan], width=0.4, label="before", color="#9bb7d4")
    ax.bar([x + 0.2 for x in xs], [g["after"] for g in width_plan], width=0.4, label="after", color="#1f4e79")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("channel group widths before / after the search")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_pareto(variants: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against measured p50 latency (smallest batch), one point per variant."""
    points = []
    for v in variants:
        if not v.get("latency") or v.get("accuracy") is None:
            continue
        batch = min(v["latency"], key=int)
        points.append((v["latency"][batch]["p50_ms"], v["accuracy"], v["name"], batch))
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    best = []
    for ms, acc, _name, _b in sorted(points):
        if not best or acc > best[-1][1]:
            best.append((ms, acc))
    ax.plot([p[0] for p in best], [p[1] for p in best], "--", color="#999999", label="Pareto front")
    for ms, acc, name, _b in points:
        ax.scatter([ms], [acc], s=40)
        ax.annotate(name, (ms, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"measured p50 latency (ms, batch {points[0][3]})")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs measured latency per variant")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
