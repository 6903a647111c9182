"""`BuildPlan`: everything one build depends on, frozen, and written next to its outputs.

Why a frozen plan: every stage reads its options from here and nowhere else, so
the stage cache can key on exactly what a stage saw, and `plan.json` replays a
build (`hadmc-deploy build --config build/x/plan.json`, or `--resume build/x`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hadmc_deploy import __version__
from hadmc_deploy.calibration.samples import check_calib_samples
from hadmc_deploy.config import OPTIONS
from hadmc_deploy.data import check_source_exists
from hadmc_deploy.detection.dataset import check_detection_source, is_detection_source
from hadmc_deploy.errors import UsageError
from hadmc_deploy.fileio import sha256_file, write_json_atomic
from hadmc_deploy.options import BuildOptions
from hadmc_deploy.targets import TargetProfile

PLAN_FILE = "plan.json"
#: points of accuracy the deployed artifact may lose when --eval is given and no guard is set.
DEFAULT_ACCURACY_GUARD = 1.0
PLAN_SCHEMA = "hadmc-deploy/build-plan"
PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BuildPlan:
    """One build: the model, how to load it, the target, and every option (merged)."""

    model: str | None
    arch: str | None
    arch_kwargs: dict[str, Any]
    input_shape: tuple[int, ...]
    trust_model: bool
    target: TargetProfile
    out_dir: Path
    options: dict[str, Any]
    targets_file: str | None = None
    dry_run: bool = False
    #: sha256 of the model file (None for --arch at random init).
    model_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def settings(self) -> BuildOptions:
        """The options as typed sections: what the stages read."""
        return BuildOptions.from_values(self.options)

    @property
    def precision(self) -> str:
        return self.options.get("precision") or self.target.default_precision

    @property
    def round_to(self) -> int:
        return int(self.options.get("round_to") or self.target.alignment(self.precision))

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batches benchmarked: --batch, else the target's, with the --input-shape batch added.
        Why added: the decide stage times the candidates at the batch the search optimised for only
        when it is benchmarked (build/inputs.primary_batch); a build at 4,1,16,16 searched and priced
        batch 4, then decided, judged its budget and skipped its self-check at batch 1."""
        given = self.options.get("batch")
        sizes = tuple(int(b) for b in (given or self.target.batch_sizes))
        search = int(self.input_shape[0])
        return sizes if given or search in sizes else tuple(sorted({*sizes, search}))

    @property
    def calib_source(self) -> str | None:
        return self.settings.data.calib_source

    def data_sources(self) -> dict[str, str | None]:
        return {"train": self.options.get("train"), "calib": self.calib_source, "eval": self.options.get("eval")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "schema_version": PLAN_SCHEMA_VERSION,
            "hadmc_deploy": __version__,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "input_shape": list(self.input_shape),
            "trust_model": self.trust_model,
            "targets_file": self.targets_file,
            "out_dir": str(self.out_dir),
            "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
            "data": self.data_sources(),
            "target": self.target.to_dict(),
        }

    def save(self) -> Path:
        path = self.out_dir / PLAN_FILE
        write_json_atomic(path, self.to_dict())
        return path


def default_out_dir(model: str | None, arch: str | None, target: str) -> Path:
    stem = Path(model).stem if model else (arch or "model").rpartition(":")[2]
    return Path("build") / f"{stem}-{target}"


def make_plan(
    *,
    model: str | None,
    arch: str | None,
    arch_kwargs: dict[str, Any],
    input_shape: tuple[int, ...],
    trust_model: bool,
    target: TargetProfile,
    options: dict[str, Any],
    targets_file: str | None = None,
    dry_run: bool = False,
    deploy: bool = True,
) -> BuildPlan:
    """Validate option combinations once, here, so stages can trust the plan.

    `deploy=False` plans the compression stages only (`prune`): no INT8 stage runs, so
    calibration data is not required."""
    missing = [o.name for o in OPTIONS if o.name not in options]
    if missing:
        raise UsageError(f"internal: options missing from the plan: {', '.join(missing)}")
    budgets = [name for name in ("speedup", "latency_ms", "ratio", "macs_ratio", "widths") if options[name] is not None]
    if len(budgets) > 1:
        flags = " and ".join("--" + b.replace("_", "-") for b in budgets)
        if "widths" in budgets:
            raise UsageError(f"--widths replaces the search: do not also give {flags.replace('--widths and ', '')}")
        raise UsageError(f"{flags} both given: give exactly one of --speedup, --latency-ms, --ratio, --macs-ratio, --widths", hint="choose one budget")
    for name in ("ratio", "macs_ratio"):
        if options[name] is not None and not 0.0 < options[name] < 1.0:
            raise UsageError(f"--{name.replace('_', '-')} {options[name]:g} is outside (0, 1)", hint="e.g. 0.3 removes 30%")
    if options["importance"] in ("taylor", "gradient") and not (options["data"] or options["train"]):
        raise UsageError(f"--importance {options['importance']} needs --data (or --train) SOURCE to compute gradients", hint="e.g. --data builtin:fashion-mnist:train")
    if options["round_to"] is not None and options["round_to"] < 1:
        raise UsageError(f"--round-to {options['round_to']} must be a positive integer")
    if options["widths"] is not None and not Path(options["widths"]).is_file():
        raise UsageError(f"--widths file {options['widths']} does not exist")
    if options["speedup"] is not None and options["speedup"] <= 1.0:
        raise UsageError(f"--speedup {options['speedup']:g} must be greater than 1", hint="e.g. --speedup 1.5")
    if options["latency_ms"] is not None and options["latency_ms"] <= 0:
        raise UsageError(f"--latency-ms {options['latency_ms']:g} must be positive")
    if options["precision"] and options["precision"] not in target.precisions:
        raise UsageError(f"target {target.name} does not offer precision {options['precision']}", hint=f"choose one of {', '.join(target.precisions)}")
    precision = options["precision"] or target.default_precision
    if deploy and precision == "int8" and not (options["calib"] or options["train"]):
        raise UsageError("INT8 needs calibration data", hint="pass --calib DATA (e.g. builtin:fashion-mnist:train) or --precision fp32")
    for name in ("train", "calib", "eval", "data"):
        if options[name]:
            source = str(options[name])
            if is_detection_source(source):
                check_detection_source(source)
            else:
                check_source_exists(source)
    options = dict(options)
    if options["max_accuracy_drop"] is None and options["eval"]:
        options["max_accuracy_drop"] = DEFAULT_ACCURACY_GUARD  # the guard is on whenever accuracy can be measured
    if options["max_accuracy_drop"] is not None and not options["eval"]:
        raise UsageError("--max-accuracy-drop needs --eval data to measure accuracy on")
    if options["max_accuracy_drop"] is not None and options["max_accuracy_drop"] < 0:
        raise UsageError("--max-accuracy-drop must be >= 0")
    for name in ("epochs", "calib_samples", "runs"):
        if options[name] is not None and options[name] <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if options["calib_samples"] is not None:
        check_calib_samples(options["calib_samples"])  # before any stage: calibration would refuse it minutes later
    # recovery's own checks, before any stage: the recover stage met a bad --lr after the table, the
    # search and the latency check (6.8 s of a build whose table was cached, and a build directory
    # left, to say so). Imported here: it imports torch, which this module does not need otherwise.
    from hadmc_deploy.recover import RecoveryOptions

    RecoveryOptions(lr=options["lr"], batch_size=options["batch_size"], temperature=options["kd_temperature"], alpha=options["kd_alpha"]).validate()
    if any(b < 1 for b in options["batch"] or ()):
        raise UsageError("--batch sizes must be >= 1")
    out = Path(options["out"]) if options["out"] else default_out_dir(model, arch, target.name)
    sha = sha256_file(model) if model and Path(model).is_file() else None
    return BuildPlan(
        model=model,
        arch=arch,
        arch_kwargs=dict(arch_kwargs),
        input_shape=tuple(int(d) for d in input_shape),
        trust_model=trust_model,
        target=target,
        out_dir=out,
        options=dict(options),
        targets_file=targets_file,
        dry_run=dry_run,
        model_sha256=sha,
    )


def read_plan_file(build_dir: str | Path) -> dict[str, Any]:
    """The plan.json of an earlier build (for --resume DIR)."""
    path = Path(build_dir) / PLAN_FILE
    if not path.is_file():
        raise UsageError(f"{build_dir} holds no {PLAN_FILE}", hint="pass the directory an earlier `hadmc-deploy build` wrote")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc.msg})") from exc
    if data.get("schema") != PLAN_SCHEMA:
        raise UsageError(f"{path} is not a hadmc-deploy build plan")
    return data
