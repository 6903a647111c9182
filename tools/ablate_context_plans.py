"""Which deployed plans the context fit should profile, judged on the same measurements: every
candidate plan is profiled once, then the fit runs on subsets of them, and each fit prices the
same held-out plans, timed once.

    .venv/bin/python tools/ablate_context_plans.py --cell demo96:fp32:1 --repeats 3
    .venv/bin/python tools/ablate_context_plans.py --cell demo96:int8:1 --repeats 4 --offgrid 0.3 --json docs/context_plans_ablation.json
    .venv/bin/python tools/ablate_context_plans.py --cell resnet18:fp32:32 --repeats 2 --crossed
    .venv/bin/python tools/ablate_context_plans.py --summarise docs/context_plans_offgrid90.json

Why: two validation runs minutes apart differ by the machine's drift (here often more than the
effect of adding or dropping one profiled plan: docs/latency_model.md, "Method v17"), so A/B runs
of two checkouts need many repeats to see such a change. Here the fits differ only in which of the
same measurements they may use (`context_measure.ContextMeasurements.subset`,
`context.fit_measured`). Each repeat measures a new table, profiles the candidates
(`context_plans.calibration_plans` of the current method) and times the held-out plans: issue 13's
`prune --ratio` plans (unaligned), the validation's random plans (`validate_latency_model.draw_plans`,
half aligned, half not) and two of the profiled plans again (`AGAIN`: their errors are the
drift between the fit's timing and this one, a floor for the others'), in 7 interleaved rounds,
the fastest round as the validation takes it.

The fits compared: the current method's plans and any `--offgrid` candidates ("all"), and each
off-grid plan left out in turn (what the fit loses without it); with `--crossed`, the method's
plans against theirs plus the two crossed plans, fitted as the method does and with channel
forms (latency/channel_form.py) allowed on every conv, by the method's rule and always.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from validate_latency_model import (  # noqa: E402
    MODELS,
    cell_model,
    draw_plans,
    predict,
    ratio_plans,
    spearman,
    time_deployed,
)

from hadmc_deploy.latency.auto import MeasureOptions, measure_table  # noqa: E402
from hadmc_deploy.latency.channel_form import WIN_MARGIN  # noqa: E402
from hadmc_deploy.latency.context import FORM_OPS, fit_measured  # noqa: E402
from hadmc_deploy.latency.context_measure import measure_plans  # noqa: E402
from hadmc_deploy.latency.context_plans import (  # noqa: E402
    CROSSED_FRACTIONS,
    calibration_plans,
    context_step,
    crossed_plan,
    offgrid_plan,
)
from hadmc_deploy.latency.measure import get_backend  # noqa: E402
from hadmc_deploy.latency.predictor import LutLatencyModel  # noqa: E402
from hadmc_deploy.targets import get_target  # noqa: E402
from hadmc_deploy.timing import WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS  # noqa: E402
from hadmc_deploy.ui import UI  # noqa: E402

#: context plans timed again with the held-out plans (see one_repeat)
AGAIN = ("aligned50", "offgrid45")


@dataclass(frozen=True)
class FitVariant:
    """Which of the profiled plans a fit may use, and where it may keep a channel form."""

    plans: list[str]
    form_ops: frozenset[str] = FORM_OPS
    form_margin: float = WIN_MARGIN


def variants(candidates: list[str], method: list[str]) -> dict[str, FitVariant]:
    """"all"; without --crossed the candidates without each off-grid plan in turn, with it the
    method's own plans, the crossed plans in place of the off-grid ones (as many plans), and all
    with channel forms on every conv (kept by the method's rule, and always)."""
    out = {"all": FitVariant(candidates)}
    extra = [n for n in candidates if n not in method]
    if not any(n.startswith("crossed") for n in extra):
        for name in candidates:
            if name.startswith("offgrid"):
                out[f"without {name}"] = FitVariant([n for n in candidates if n != name])
        return out
    out["method"] = FitVariant(method)
    out["crossed, not off-grid"] = FitVariant([n for n in candidates if not n.startswith("offgrid")])
    conv_forms = FORM_OPS | {"conv"}
    out["all, conv forms"] = FitVariant(candidates, conv_forms)
    out["all, conv forms always"] = FitVariant(candidates, conv_forms, float("inf"))
    return out


def one_repeat(arch: str, precision: str, batch: int, plans_per_seed: int, seed: int, work: Path, ui: UI, offgrid: tuple[float, ...] = (),
               crossed: bool = False) -> dict:
    model, shape, graph = cell_model(arch, batch)
    backend = get_backend("onnxruntime")
    opts = MeasureOptions(context=False)
    table, _ = measure_table(model, graph, shape, get_target("cpu"), precision, batch, work / "lut.json", options=opts, ui=ui)
    step = context_step(table)
    candidates = calibration_plans(graph, step)
    method = list(candidates)
    if crossed:  # the crossed plans the method profiles for grouped convs only
        high, low = CROSSED_FRACTIONS
        for name, plan in (("crossed", crossed_plan(graph, high, low)), ("crossed-reverse", crossed_plan(graph, low, high))):
            if plan not in candidates.values():
                candidates[name] = plan
    for frac in offgrid if step > 1 else ():  # more odd-width candidates than the method profiles
        plan = offgrid_plan(graph, frac)
        if plan not in candidates.values():
            candidates[f"offgrid{int(frac * 100)}"] = plan
    defaults = MeasureOptions()
    measured = measure_plans(table, model, graph, shape, backend, plans=candidates, rounds=defaults.context_rounds,
                             model_seconds=defaults.context_model_seconds, ui=ui)
    # two profiled plans timed again: their error is the drift and noise between the fit's timing
    # and this one (each fit prices its own plans near what they measured), the floor of the others'
    again = {f"again:{n}": candidates[n] for n in AGAIN if n in candidates}
    held_out = {"full": graph.full_widths(), **ratio_plans(graph, (0.3, 0.6)), **draw_plans(graph, plans_per_seed, step, seed), **again}
    rounds, _ = time_deployed(model, graph, held_out, shape, precision, WHOLE_MODEL_ROUNDS, WHOLE_MODEL_RUNS, "wall", ui)
    timed = {n: min(r) for n, r in rounds.items()}
    fits = {}
    for label, variant in variants(list(candidates), method).items():
        fitted = copy.deepcopy(table)
        fit_measured(fitted, graph, measured.subset(variant.plans), step, form_ops=variant.form_ops, form_margin=variant.form_margin)
        forms = sum(1 for f in fitted.context.factors for k in f if k.endswith("_form"))
        lm = LutLatencyModel(fitted, source="<ablation>", warn_extrapolation=False)
        predicted = {n: predict(lm, graph, w, precision, batch) for n, w in held_out.items()}
        err = {n: 100 * (predicted[n] / timed[n] - 1) for n in held_out}
        ratio_err = {n: 100 * ((predicted[n] / predicted["full"]) / (timed[n] / timed["full"]) - 1) for n in held_out if n != "full"}
        held = [n for n in held_out if n != "full" and not n.startswith("again:")]
        fits[label] = {"plans": variant.plans, "forms": forms, "predicted_ms": predicted, "err_pct": err, "ratio_err_pct": ratio_err,
                       "mape": float(np.mean([abs(err[n]) for n in held])), "ratio_mape": float(np.mean([abs(ratio_err[n]) for n in held])),
                       "spearman": spearman([predicted[n] for n in held], [timed[n] for n in held])}
    return {"step": step, "candidates": list(candidates), "context_ms": measured.model_ms, "timed_ms": timed, "fits": fits}


def summarise(path: Path) -> None:
    """Per cell of a --json file (runs appended by this tool): each fit's median over repeats of the
    MAPE of speedups, of that over the random unaligned plans alone, and of the MAPE, as a Markdown table."""
    cells: dict[str, list[dict]] = {}
    for run in json.loads(path.read_text()):
        cells.setdefault(run["cell"], []).extend(run["repeats"])
    labels = list(dict.fromkeys(label for repeats in cells.values() for r in repeats for label in r["fits"]))

    def unaligned(fit: dict) -> float:
        return statistics.fmean(abs(v) for plan, v in fit["ratio_err_pct"].items() if plan.startswith("unaligned"))

    columns = [("MAPE of speedups", lambda f: f["ratio_mape"]), ("unaligned plans' MAPE of speedups", unaligned), ("MAPE", lambda f: f["mape"])]
    print("| cell | repeats | " + " | ".join(f"{title}: {label}" for title, _ in columns for label in labels) + " |")
    print("|---|---|" + "---|" * (len(columns) * len(labels)))
    for cell, repeats in cells.items():
        values = [statistics.median(get(r["fits"][label]) for r in repeats) if all(label in r["fits"] for r in repeats) else None
                  for _, get in columns for label in labels]
        print(f"| {cell} | {len(repeats)} | " + " | ".join("-" if v is None else f"{v:.1f}%" for v in values) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="demo96:fp32:1", help="model:precision:batch (models of validate_latency_model.py)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plans", type=int, default=6, help="random held-out plans per repeat (half aligned)")
    parser.add_argument("--offgrid", default="", help="comma-separated width fractions of further odd-width candidate plans "
                        "(0.3: the plan method v17 added, docs/latency_model.md)")
    parser.add_argument("--crossed", action="store_true", help="also profile the crossed plans (for grouped convs only in the method) "
                        "and compare fits with channel forms on every conv")
    parser.add_argument("--json", type=Path, help="append this run to a JSON list here")
    parser.add_argument("--summarise", type=Path, help="print the fits of every cell of such a JSON list as a table, measure nothing")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return 0
    arch, precision, batch_text = args.cell.split(":")
    if arch not in MODELS:
        parser.error(f"unknown model {arch!r}: one of {', '.join(MODELS)}")
    offgrid = tuple(float(x) for x in args.offgrid.split(",") if x)
    ui = UI(quiet=True)
    torch.set_num_threads(1)
    started = time.strftime("%Y-%m-%d %H:%M")
    repeats = []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="hadmc-ablate-") as tmp:
            repeats.append(one_repeat(arch, precision, int(batch_text), args.plans, k, Path(tmp), ui, offgrid, args.crossed))
        r = repeats[-1]
        print(f"repeat {k + 1}: " + "; ".join(f"{label}: MAPE {f['mape']:.1f}%, of speedups {f['ratio_mape']:.1f}%" for label, f in r["fits"].items()))
    labels = list(repeats[0]["fits"])
    plans = [n for n in repeats[0]["timed_ms"] if n != "full"]
    print(f"\n{args.cell}, {args.repeats} repeats ({started}): median over repeats of each held-out plan's |error of its speedup| (%)")
    print(f"{'plan':14s} " + " ".join(f"{label:>22s}" for label in labels))
    for plan in plans:
        print(f"{plan:14s} " + " ".join(f"{statistics.median(abs(r['fits'][label]['ratio_err_pct'][plan]) for r in repeats):22.1f}" for label in labels))
    for key, title in (("mape", "MAPE"), ("ratio_mape", "MAPE of speedups"), ("spearman", "Spearman")):
        print(f"{title + ', median':14s} " + " ".join(f"{statistics.median(r['fits'][label][key] for r in repeats):22.2f}" for label in labels))
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else []
        data.append({"measured_at": started, "cell": args.cell, "repeats": repeats})
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
