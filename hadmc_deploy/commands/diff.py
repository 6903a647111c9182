"""`hadmc-deploy diff OLD NEW`: which layers' weights changed between two checkpoints or
build directories, and what a new deployment therefore needs: nothing, a re-calibration
(same architecture and shapes, new weights), or a full rebuild (architecture changed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import UsageError
from hadmc_deploy.ui import UI

HELP = "compare two checkpoints or build directories tensor by tensor; say whether to rebuild or re-calibrate"
DESCRIPTION = """Compare two checkpoints (state_dicts, hadmc-deploy checkpoints or pruned checkpoints)
or two build directories (their final PyTorch model: recovered.pth, else pruned.pth, else the
model the build started from). Per-tensor SHA-256 hashes show which layers' weights changed.

Verdict:
  identical    - nothing to do; a build of NEW hits the cache everywhere
  recalibrate  - same architecture and tensor shapes, weights changed: re-export, re-calibrate and
                 rebuild (or refit) the engine; the width plan, LUT and surgery stay valid
  rebuild      - architecture or shapes changed: the whole pipeline, engine included

examples:
  hadmc-deploy diff build/demo-cpu build/demo-cpu-v2
  hadmc-deploy diff old.pth new.pth --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", metavar="OLD", help="checkpoint file or build directory")
    parser.add_argument("new", metavar="NEW", help="checkpoint file or build directory")
    parser.add_argument("--all", action="store_true", help="list unchanged tensors too")


def resolve_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a path stands for, and what we know about it (build plan, width plan)."""
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="pass a checkpoint file or a build directory")
    if path.is_file():
        return path, {}
    info: dict[str, Any] = {}
    plan_file = path / "plan.json"
    if plan_file.is_file():
        info["plan"] = json.loads(plan_file.read_text())
    if (path / "width_plan.json").is_file():
        info["width_plan"] = json.loads((path / "width_plan.json").read_text()).get("keep")
    recover = path / "manifests" / "recover.json"
    final = json.loads(recover.read_text()).get("result", {}).get("final") if recover.is_file() else None
    if final and (path / final).is_file():
        return path / final, info
    if "plan" in info and info["plan"].get("model"):
        return Path(info["plan"]["model"]), info
    raise UsageError(f"{path} is a directory without a build (no plan.json) or final checkpoint", hint="pass a checkpoint file or a build directory")


def load_tensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state_dict, architecture description) without unpickling code (weights_only)."""
    import pickle

    import torch

    from hadmc_deploy.errors import ModelFileCorruptError
    from hadmc_deploy.loading import extract_state_dict

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelFileCorruptError(f"{path} is not a checkpoint `diff` can read safely ({str(exc).splitlines()[0][:160]})", hint="diff compares state_dict checkpoints; pickled modules are not loaded") from exc
    state = extract_state_dict(obj)
    if state is None:
        raise ModelFileCorruptError(f"{path} holds no state_dict")
    arch = {}
    if isinstance(obj, dict):
        arch = {k: obj.get(k) for k in ("arch", "arch_kwargs", "format") if k in obj}
        for key in ("plan", "width_plan", "keep"):
            if key in obj:
                value = obj[key]
                if isinstance(value, str):  # pruned checkpoints store the plan as JSON text
                    value = json.loads(value)
                arch["widths"] = value.get("keep", value) if isinstance(value, dict) else value
    return state, arch


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per tensor name: same / changed / shape changed / added / removed."""
    from hadmc_deploy.cache import tensor_hashes

    h_old, h_new = tensor_hashes(old), tensor_hashes(new)
    rows = []
    for name in list(old) + [n for n in new if n not in old]:
        row: dict[str, Any] = {"tensor": name, "layer": name.rpartition(".")[0] or name}
        if name not in new:
            row.update(status="removed", old_shape=list(old[name].shape), new_shape=None)
        elif name not in old:
            row.update(status="added", old_shape=None, new_shape=list(new[name].shape))
        else:
            a, b = old[name], new[name]
            row.update(old_shape=list(a.shape), new_shape=list(b.shape), old_sha256=h_old[name], new_sha256=h_new[name])
            if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
                row["status"] = "shape changed"
            elif h_old[name] == h_new[name]:
                row["status"] = "same"
            else:
                row["status"] = "changed"
                if a.dtype.is_floating_point:
                    row["max_abs_diff"] = float((a.double() - b.double()).abs().max())
        rows.append(row)
    return rows


def verdict(rows: list[dict[str, Any]], arch_old: dict[str, Any], arch_new: dict[str, Any]) -> tuple[str, str]:
    statuses = {r["status"] for r in rows}
    arch_keys = ("arch", "arch_kwargs", "widths")
    # only what both record: a plain state_dict records no architecture, so beside a pruned checkpoint
    # "arch differs" and "arch_kwargs differs" said nothing the tensors did not (None against a value)
    arch_changed = [k for k in arch_keys if k in arch_old and k in arch_new and arch_old[k] != arch_new[k]]
    if statuses & {"added", "removed", "shape changed"} or arch_changed:
        why = [f"{sum(r['status'] == s for r in rows)} tensors {s}" for s in ("added", "removed", "shape changed") if s in statuses]
        why += [f"{k} differs" for k in arch_changed]
        return "rebuild", "architecture or tensor shapes changed (" + ", ".join(why) + "): rerun the whole pipeline and rebuild the engine"
    if "changed" in statuses:
        n = sum(r["status"] == "changed" for r in rows)
        return "recalibrate", f"same architecture and shapes, {n} tensors changed: re-export, re-calibrate and rebuild/refit the engine; the width plan and LUT stay valid"
    return "identical", "every tensor is identical: nothing to rebuild"


def run(args: argparse.Namespace, ui: UI) -> dict[str, Any]:
    from rich.table import Table

    old_path, old_info = resolve_checkpoint(Path(args.old))
    new_path, new_info = resolve_checkpoint(Path(args.new))
    old_sd, old_arch = load_tensors(old_path)
    new_sd, new_arch = load_tensors(new_path)
    for arch, info in ((old_arch, old_info), (new_arch, new_info)):
        if "widths" not in arch and info.get("width_plan"):
            arch["widths"] = info["width_plan"]
    rows = compare(old_sd, new_sd)
    decision, reason = verdict(rows, old_arch, new_arch)
    changed_layers = sorted({r["layer"] for r in rows if r["status"] != "same"})
    table = Table(title=f"{old_path} -> {new_path}", title_justify="left")
    for col in ("tensor", "status", "old shape", "new shape", "max |diff|"):
        table.add_column(col)
    for r in rows:
        if r["status"] == "same" and not args.all:
            continue
        diff = r.get("max_abs_diff")
        table.add_row(r["tensor"], r["status"], str(r["old_shape"]), str(r["new_shape"]), "-" if diff is None else f"{diff:.3g}")
    ui.out.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("same", "changed", "shape changed", "added", "removed")}
    ui.out.print(f"{len(rows)} tensors: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    ui.out.print(f"layers with changes: {', '.join(changed_layers) if changed_layers else 'none'}")
    ui.out.print(f"[bold]{decision}[/bold]: {reason}")
    return {"old": str(old_path), "new": str(new_path), "verdict": decision, "reason": reason, "counts": counts, "changed_layers": changed_layers, "tensors": [r for r in rows if r["status"] != "same" or args.all]}
