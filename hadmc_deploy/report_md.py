"""report.md: the report as Markdown tables, rendered from report.json's dict only
(so the Markdown can never say something the JSON does not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hadmc_deploy.errors import BackendUnavailableError

#: prediction sources that predict the variant's own graph from measurements on this machine: their misses are flagged.
MEASURED_PREDICTORS = ("lut",)


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_num(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: int | None) -> str:
    if not n:
        return "-"
    for unit, div in (("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def variant_cells(row: dict[str, Any], batches: list[str]) -> list[str]:
    """One variant as table cells: accuracy, p50 per batch, speedup per batch, params, MACs, size, predicted."""
    lat = row.get("latency") or {}
    pred = (row.get("predicted") or {}).get(batches[0], {}) if batches else {}
    acc = row.get("accuracy")
    return [
        row["name"],
        "-" if acc is None else f"{acc:.2f}%",
        *[fmt_ms(lat.get(b, {}).get("p50_ms")) for b in batches],
        *[("-" if row.get("speedup", {}).get(b) is None else f"{row['speedup'][b]:.2f}x") for b in batches],
        fmt_num(row.get("params")),
        fmt_num(row.get("macs")),
        fmt_bytes(row.get("file_bytes")),
        "-" if not pred else f"{pred['ms']:.3f} ({pred['source']})",
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    model, target = report["model"], report["target"]
    batches = sorted({b for v in report["variants"] for b in (v.get("latency") or {})}, key=int) or [str(b) for b in report["options"].get("batch") or [1]]
    out = [decision_line(report), "", f"# hadmc-deploy build report: {model['source']} -> {target['name']}", ""]
    if not report["complete"]:
        out += ["**Incomplete build**: see the stage list for the stage that failed.", ""]
    out += decision_section(report)
    out += [
        f"- accuracy metric: {report['accuracy'].get('metric', 'top-1 accuracy (%)')}",
        f"- target: {target['name']} ({target['description']}); backend {target['backend']}; precision {target['precision']}; INT8 form {target['int8_form']}; channel multiple {target['round_to']}",
        f"- model: {model['arch']} ({model['kind']}), input {model['input_shape']}, {fmt_num(model['params'])} params, {fmt_num(model['macs'])} MACs",
        f"- latency model: {report['latency_model'].get('label', '-')} ({report['latency_model'].get('lut_how', '-')})",
        f"- created {report['created']}; schema {report['schema']} v{report['schema_version']}",
        "",
        "## Variants (measured on this machine)",
        "",
    ]
    header = ["variant", "accuracy", *[f"p50 ms b{b}" for b in batches], *[f"speedup b{b}" for b in batches], "params", "MACs", "file", f"predicted ms b{batches[0]}"]
    out.append(_table(header, [variant_cells(v, batches) for v in report["variants"]]))
    out.append("")
    lat_rows = []
    for v in report["variants"]:
        for b, s in sorted((v.get("latency") or {}).items(), key=lambda kv: int(kv[0])):
            pred = (v.get("predicted") or {}).get(b, {})
            lat_rows.append([v["name"], b, fmt_ms(s.get("p50_ms")), fmt_ms(s.get("p90_ms")), f"{s.get('throughput', 0):.1f}", fmt_ms(pred.get("ms")), pred.get("source", "-"), str(s.get("runs"))])
    if lat_rows:
        out += ["### Latency detail", "", _table(["variant", "batch", "p50 ms", "p90 ms", "throughput /s", "predicted ms", "predicted by", "runs"], lat_rows), ""]
        how = sorted({(b, s["timed"]) for v in report["variants"] for b, s in (v.get("latency") or {}).items() if s.get("timed")})
        out += [f"At batch {b}: {timed}; at the other batches one pass of timed runs per variant." for b, timed in how] + ([""] if how else [])
    for note in report.get("notes", []):
        out.append(f"- **note**: {note}")
    for v in report["variants"]:
        if v.get("accuracy") is not None:
            out.append(f"- {v['name']}: accuracy measured with {v.get('accuracy_measured_with', '-')}")
    out.append("")
    acc = report["accuracy"]
    out += ["## Where the accuracy went", ""]
    if acc.get("baseline") is None:
        out += ["No --eval data: accuracy not measured." + (" The pruned model was compared with the original instead (Recovery)." if report["recovery"].get("agreement") else ""), ""]
    else:
        cp = acc.get("change_points", {})
        rows = [
            ["baseline (original, FP32)", _pct(acc.get("baseline")), ""],
            ["after pruning (before recovery)", _pct(acc.get("pruned_before_recovery")), _delta(cp.get("pruning"))],
            ["after recovery", _pct(acc.get("after_recovery")), _delta(cp.get("recovery"))],
            [f"final ({acc.get('final_variant')})", _pct(acc.get("final")), _delta(cp.get("quantization"))],
        ]
        out += [f"Evaluated on {acc.get('eval_source')}.", "", _table(["step", "accuracy", "change (points)"], rows), ""]
        guard = acc.get("guard")
        if guard:
            verdict = "EXCEEDED" if guard["exceeded"] else "within"
            out += [f"Accuracy guard (--max-accuracy-drop {guard['allowed']}): final drop {guard['drop']:.2f} points, {verdict} the limit{' (accepted with --allow-accuracy-drop)' if guard['exceeded'] and guard['allowed_by_flag'] else ''}.", ""]
    rec = report["recovery"]
    out += ["## Recovery", "", f"- mode: {rec.get('mode', '-')}"]
    if rec.get("statement"):
        out.append(f"- {rec['statement']}")
    detail = rec.get("detail") or {}
    if detail.get("steps"):
        out.append(f"- {detail['steps']} optimizer steps" + (f" at --lr {detail['lr']:g}" if detail.get("lr") else "") + f", kept epoch {detail.get('best_epoch', 0)}")
    out += [f"- {m}" for m in detail.get("messages") or []]
    agreement = rec.get("agreement")
    if agreement:
        if rec.get("agreement_after_bn"):
            out.append(f"- after BatchNorm recalibration alone: top-1 agreement {rec['agreement_after_bn']['top1_agreement']:.1%}; "
                       "then distilled from the original on the calibration images (labels unused)")
        if not rec.get("agreement_decides"):
            consequence = "recorded: the --eval accuracy decides what deploys"
        elif report["options"].get("allow_accuracy_drop"):
            consequence = "accepted with --allow-accuracy-drop"
        else:
            consequence = "the pruned variants may not deploy"
        out.append("- the pruned model against the original: " + _agreement_text(agreement, consequence))
        if rec.get("not_distilled"):
            out.append(f"- {rec['not_distilled']}")
    out.append("")
    if report["width_plan"]:
        s = report["search"]
        out += ["## Width plan", "", f"Search {s.get('method')} with the {s.get('latency_source')} latency model: predicted {fmt_ms(s.get('baseline_ms'))} -> {fmt_ms(s.get('predicted_ms'))} ms ({s.get('predicted_speedup', 0):.2f}x; budget {fmt_ms(s.get('budget_ms'))} ms).", ""]
        out += [_table(["group", "before", "after", "predicted ms saved"], [[g["group"], str(g["before"]), str(g["after"]), fmt_ms(g.get("saved_ms"))] for g in report["width_plan"]]), ""]
    q = report["quantization"]
    floats = [(m, f) for m, lst in (q.get("float_nodes") or {}).items() for f in lst]
    calib = q.get("calibration", {})
    calib_text = calib.get("_skipped") or "; ".join(f"{m}: {c.get('method')} on {c.get('num_samples')} samples" for m, c in calib.items() if isinstance(c, dict)) or "-"
    out += ["## Quantization", "", f"- form: {q.get('form', '-')}; calibration: {calib_text}"]
    out.append("- layers left in float: " + ("none" if not floats else "; ".join(f"{m}: {f['node']} ({f['reason']})" for m, f in floats)))
    out += [f"- {m} INT8 guard: {q[m]['reason']}" for m in ("baseline", "pruned") if isinstance(q.get(m), dict) and q[m].get("reason")]
    out.append("")
    out += ["## Export verification", ""]
    ex_rows = [[k, v.get("exporter") or "-", v.get("simplifier") or "-", str(v.get("opset")), f"{v.get('max_abs_err', 0):.2e}", f"{v.get('max_rel_err', 0):.2e}", str(v.get("verification", {}).get("inputs"))] for k, v in report["export"].items()]
    if ex_rows:
        out += [_table(["model", "exporter", "simplifier", "opset", "max abs err", "max rel err", "inputs"], ex_rows), ""]
    backend = report["backend"]
    if backend.get("fallback_message"):
        out += ["## Backend", "", backend["fallback_message"], ""]
    out += ["## Stages", "", _table(["stage", "status", "seconds", "detail"], [[s["name"], s["status"], f"{s['seconds']:.1f}", s["detail"].replace("|", "/")] for s in report["stages"]]), ""]
    for name, rel in report["plots"].items():
        out += [f"![{name}]({rel})", ""]
    out += ["## Versions and hashes", "", "- " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    out += [f"- {k}: `{v}`" for k, v in report["hashes"].items() if v]
    return "\n".join(out) + "\n"


def _agreement_text(a: dict, consequence: str) -> str:
    """One line on the pruned model's agreement with the original (`build/fidelity.py`), and what a
    failed check meant for the build."""
    if not a.get("judged"):
        return f"no classifier output to compare on {a.get('source')}: not judged (give labelled --eval data)"
    weighted = a.get("confidence_agreement")
    text = f"top-1 agreement {a['top1_agreement']:.1%}" + (f" ({weighted:.1%} weighted by the original's confidence, not judged)" if weighted is not None else "")
    bound = a.get("disagreement_bound")
    vouched = f" (its {a.get('samples')} images vouch for a disagreement below {bound:.1%}, 95%)" if bound is not None else ""
    verdict = f"passed{vouched}" if a.get("passed") else f"FAILED ({a.get('reason')}): {consequence}"
    return f"{text}, on {a.get('source')}: {verdict}"


def _mixed_check_text(check: dict[str, Any]) -> str:
    """A mixed graph's check against FP32 (the decide stage's, without labels)."""
    agreement = check.get("top1_agreement")
    seen = f"top-1 agreement {agreement:.1%} on {check.get('samples')} images" if agreement is not None else f"{check.get('samples')} images"
    return f"{seen}, passed" if check.get("passed") else f"{seen}, FAILED ({check.get('reason')}): not deployed"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _delta(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def decision_line(report: dict[str, Any], build_dir: str | Path | None = None) -> str:
    """The report's first line: what to deploy, and what it measured. The artifact's path is the
    build directory's (report.md lives there); with `build_dir`, it is joined to it, for a line
    printed to a user whose working directory is elsewhere."""
    d = report.get("deploy")
    unmeasured = ((report.get("decision") or {}).get("verdict") or {}).get("exit_code") == BackendUnavailableError.exit_code
    if not d:
        return "**Deploy:** nothing was built and measured here (see the backend stage)." + (" The latency budget was **not measured**." if unmeasured else "")
    acc = "" if d.get("accuracy_change") is None else f", accuracy {d['accuracy_change']:+.2f} points"
    where = Path(build_dir) / d["artifact"] if build_dir is not None else d["artifact"]
    line = (f"**Deploy: `{d['variant']}`** (`{where}`): measured {d['speedup_vs_fp32_original']:.2f}x over the FP32 original and "
            f"{d['speedup_vs_original_at_precision']:.2f}x over the original at {report['target']['precision']}, batch {d['primary_batch']}{acc}.")
    budget = d.get("budget")
    if unmeasured:  # the --fallback cpu artifacts were timed, not the target's
        line += f" The latency budget was **not measured on the {report['target']['name']}** (these are the CPU fallback's timings)."
    elif budget:
        line += budget_phrase(budget)
    return line


def budget_phrase(budget: dict[str, Any]) -> str:
    """The budget's verdict with the side-by-side speedup it rests on; a budget met only within the
    measured noise says so (1.13x against 1.25x with ±10% noise is not silently "met")."""
    goal, got, noise = budget["goal_speedup"], budget.get("measured_speedup"), budget.get("noise") or 0.0
    reference = budget.get("reference", "the reference")
    asked = f"{goal:.2f}x"
    if budget.get("goal_ms"):  # --latency-ms: the milliseconds asked, and the speedup over the reference they meant
        asked = f"{budget['goal_ms']:.3g} ms ({goal:.2f}x over {reference} as measured)"
    deployed = f"{budget['deployed_ms']:.3g} ms, " if budget.get("deployed_ms") else ""
    seen = f" ({deployed}{got:.2f}x over {reference} side by side)" if got is not None else ""
    if not budget["met"]:
        return f" Budget {asked}: **NOT met** when measured{seen}."
    if got is not None and got < goal:
        return f" Budget {asked}: **met within the measured noise** ({deployed}{got:.2f}x over {reference} side by side, noise ±{noise:.0%})."
    return f" Budget {asked}: **met** when measured{seen}."


def decision_section(report: dict[str, Any]) -> list[str]:
    """Why that variant, every candidate, the closed loop's rounds and every missed prediction."""
    decision = report.get("decision") or {}
    out: list[str] = []
    if decision.get("candidates"):
        out += ["## Decision", "", f"{decision['reason']}; candidates timed side by side at batch {decision['primary_batch']} (the p50 of each one's fastest interleaved round, noise ±{100 * decision.get('noise', 0):.0f}%):", ""]
        predicted = {v["name"]: ((v.get("predicted") or {}).get(str(decision["primary_batch"])) or {}) for v in report.get("variants", [])}

        def pred_cell(name: str, measured: float) -> str:
            p = predicted.get(name, {})
            if not p.get("ms"):
                return "-"
            if p.get("source") not in MEASURED_PREDICTORS:  # a datasheet estimate or a stand-in: no error to quote
                return f"{fmt_ms(p['ms'])} ({p.get('source')})"
            return f"{fmt_ms(p['ms'])} ({100 * (p['ms'] / measured - 1):+.0f}%)"

        rows = [[c["name"], fmt_ms(c["p50_ms"]), pred_cell(c["name"], c["p50_ms"]), "-" if c["accuracy"] is None else f"{c['accuracy']:.2f}%", c["excluded"] or c.get("unchecked") or "yes"] for c in decision["candidates"]]
        out += [_table(["variant", "p50 ms (fastest round)", "predicted ms", "accuracy", "may deploy"], rows), ""]
        out += [f"- **warning**: {w}" for w in decision.get("warnings", [])]
        if decision.get("retimed"):
            out += [f"- timed again: {decision['retimed']['why']}; the table reads all {decision['retimed']['rounds']} rounds of each"]
        out += [f"- {name}: {check}" if isinstance(check, str) else f"- {name} against FP32 on held-out images: {_mixed_check_text(check)}"
                for name, check in (decision.get("mixed_checks") or {}).items()]
    loop = report.get("closed_loop") or {}
    if loop.get("rounds"):
        rows = [[str(r.get("round")), _x(r.get("predicted_speedup")), _x(r.get("measured_speedup")), {True: "met", False: "missed"}.get(r.get("met"), r.get("stopped", "-"))] for r in loop["rounds"]]
        out += ["### Closed loop: plan, prediction, measurement", "", _table(["round", "predicted", "measured", "budget"], rows), ""]
    out += self_check_lines(decision.get("self_check") or {})
    misses = report.get("prediction_misses") or []
    if misses:
        out += ["### Predictions that missed by more than 10%", ""]
        out += [f"- {m['what']}: predicted {m['predicted']:.3f}, measured {m['measured']:.3f} ({100 * m['error']:+.0f}%)" for m in misses]
        out.append("")
    return out


def self_check_lines(check: dict[str, Any]) -> list[str]:
    """The table against what deployed (build/self_check.py), and what it changed for the next build."""
    if not check:
        return []
    if not check.get("checked"):
        return [f"Self-check of the latency table: not run ({check.get('why', '')}).", ""]
    plans = "; ".join(f"{p['name']} predicted {p['predicted_ms']:.3f}, measured {p['measured_ms']:.3f} ms ({100 * p['error']:+.0f}%)" for p in check["plans"])
    tol = 100 * check.get("tolerance", 0.1)
    earlier = check.get("history") or 0
    if check.get("feedback_written_to"):
        what = f"beyond ±{tol:.0f}%: the cached table now carries feedback x{check['feedback']['scale']:.3f}, so the next build on this machine prices on the measured scale"
        if earlier:
            what += f" (the median measured/predicted ratio over these timings and the {earlier} of earlier builds on this table)"
    elif check.get("history_written_to"):
        beside = f" beside {earlier} earlier timing(s)" if earlier else ""
        what = f"within ±{tol:.0f}% (recorded in the cached table{beside}: a later miss sets its scale to the median ratio over the last 8)"
    elif check.get("flagged"):
        what = f"beyond ±{tol:.0f}%; the table is not a cached one this build measured, so it is left as it is"
    else:
        what = f"within ±{tol:.0f}%"
    skipped = "".join(f" Not checked: {s}." for s in check.get("skipped") or [])
    return [f"Self-check of the latency table against the side-by-side timings: {plans}: {what}.{skipped}{_stage_timings(check)}", ""]


def _stage_timings(check: dict[str, Any]) -> str:
    """Where the build timed a graph in two stages: that the faster is what was checked, and how far they were apart."""
    timings = {name: t for name, t in (check.get("timings") or {}).items() if len(t) > 1}
    if not timings:
        return ""
    parts = []
    for name, t in timings.items():
        slow, fast = max(t.values()), min(t.values())
        parts.append(f"{name} " + " / ".join(f"{ms:.3f} ms ({stage})" for stage, ms in t.items()) + (f", {100 * (slow / fast - 1):.0f}% apart" if fast > 0 else ""))
    return (" Measured: the faster of the build's two side-by-side timings of each graph (load only adds time): " + "; ".join(parts) + ".")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
