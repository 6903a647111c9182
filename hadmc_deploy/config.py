"""Build options in one table: the CLI flags, the TOML config keys and the defaults.

Why one table: `--config build.toml` must mirror the command line key for key,
and the precedence (defaults < config file < command line) must hold for every
option. Generating both the argparse flags and the TOML reader from the same
`OPTIONS` list makes a drift between them impossible.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hadmc_deploy.errors import UsageError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class Option:
    """One build option. `kind` is "str", "int", "float", "bool", "ints", "floats" or "strs"."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    #: the typed section (`hadmc_deploy.options`) the stages read it from.
    section: str = "output"


OPTIONS: tuple[Option, ...] = (
    Option("target", "str", "cpu", "target profile (see `hadmc-deploy targets`)"),
    Option("out", "str", None, "build directory (default build/<model>-<target>/)", metavar="DIR"),
    Option("speedup", "float", None, "latency budget: predicted latency <= baseline / S", metavar="S", section="search"),
    Option("latency_ms", "float", None, "latency budget in milliseconds at batch 1", metavar="MS", section="search"),
    Option("search", "str", "knapsack", "width search method", choices=("knapsack", "greedy", "uniform", "amc", "ppo"), section="search"),
    Option("widths", "str", None, "use this width plan (JSON: {\"keep\": {group: channels}}, e.g. an earlier build's width_plan.json) instead of searching", metavar="PLAN", section="search"),
    Option("ratio", "float", None, "prune by ratio instead of latency: remove this share of every prunable group's channels", metavar="R", section="search"),
    Option("macs_ratio", "float", None, "prune by MACs instead of latency: remove this share of the MACs (uniform ratio by bisection)", metavar="R", section="search"),
    Option("importance", "str", "l1", "channel importance criterion", choices=("l1", "l2", "bn", "taylor", "gradient"), section="search"),
    Option("round_to", "int", None, "channel multiple (default: the target's for the precision)", metavar="N", section="search"),
    Option("min_keep_ratio", "float", 0.25, "no group keeps fewer than this share of its channels", metavar="R", section="search"),
    Option("data", "str", None, "data for taylor/gradient importance (default: the --train data)", metavar="DATA", section="search"),
    Option("importance_samples", "int", 512, "samples of the importance data that taylor/gradient scoring uses", metavar="N", section="search"),
    Option("episodes", "int", 60, "episodes for --search amc/ppo (fewer than 16/12 fall back to the knapsack)", metavar="N", section="search"),
    Option("joint_precision", "bool", False, "--search ppo also chooses int8 or float per layer (the quantization agent)", section="search"),
    Option("budget_rounds", "int", 3, "search -> build -> measure rounds to meet a latency budget (each miss corrects the latency model)", metavar="N", section="search"),
    Option("ignore", "strs", (), "layers kept intact (repeatable)", metavar="NAME", section="search"),
    Option("lut", "str", None, "latency table (JSON) measured on the target", metavar="LUT", section="latency"),
    Option("measure_lut", "bool", None, "measure a latency table for this model through this machine's backend (default: when a latency budget is given and the target is this CPU; tables are cached across builds)", section="latency"),
    Option("lut_minutes", "float", 10.0, "time budget for --measure-lut (an unfinished table resumes on the next build)", metavar="MIN", section="latency"),
    Option("task", "str", None, "what the model does (default: detect when the data is a detection set, else classify)", choices=("classify", "detect"), section="data"),
    Option("train", "str", None, "training data for recovery (e.g. builtin:fashion-mnist:train)", metavar="DATA", section="data"),
    Option("calib", "str", None, "calibration data for INT8 (default: the --train data)", metavar="DATA", section="data"),
    Option("eval", "str", None, "evaluation data for accuracy (e.g. builtin:fashion-mnist:test)", metavar="DATA", section="data"),
    Option("train_limit", "int", None, "use at most N training samples", metavar="N", section="data"),
    Option("calib_samples", "int", 512, "calibration samples", metavar="N", section="data"),
    Option("eval_limit", "int", None, "use at most N evaluation samples", metavar="N", section="data"),
    Option("mean", "floats", None, "input normalisation mean (default: 0.5, ImageNet's for 3 channels)", metavar="M", section="data"),
    Option("std", "floats", None, "input normalisation std", metavar="S", section="data"),
    Option("epochs", "float", 1.0, "recovery epochs (fractions allowed: 0.5 = half an epoch)", metavar="E", section="recovery"),
    Option("lr", "float", 0.01, "recovery learning rate", section="recovery"),
    Option("batch_size", "int", 128, "recovery batch size", section="recovery"),
    Option("distill", "bool", True, "distil from the original model during recovery (--no-distill: plain fine-tune)", section="recovery"),
    Option("kd_temperature", "float", 4.0, "distillation temperature", metavar="T", section="recovery"),
    Option("kd_alpha", "float", 0.7, "weight of the distillation term vs the labels", metavar="A", section="recovery"),
    Option("feature_weight", "float", 1.0, "weight of feature alignment (0: logits only)", metavar="W", section="recovery"),
    Option("feature_layers", "strs", (), "module names to align (default: the last 3 main blocks; repeatable)", metavar="NAME", section="recovery"),
    Option("calib_method", "str", "auto", "activation range method (auto: per tensor, the range with the least quantization error on held-out samples)", choices=("auto", "entropy", "minmax", "percentile"), section="quantization"),
    Option("precision", "str", None, "artifact precision (default: the target's)", choices=("int8", "fp16", "fp32"), section="quantization"),
    Option("max_accuracy_drop", "float", None, "accuracy guard: points the deployed artifact may lose (default 1.0 with --eval); INT8 is repaired (range method per tensor, sensitive layers in float) before it fails", metavar="P", section="quantization"),
    Option("allow_accuracy_drop", "bool", False, "report but do not fail when the accuracy guard is exceeded (the guard then does not restrict what deploys)", section="quantization"),
    Option("batch", "ints", None, "benchmark batch sizes (default: the target's)", metavar="N", section="benchmark"),
    Option("runs", "int", 50, "timed runs per benchmark of the report's latency table at the batches other than the primary one (stopped at about 0.25 s of runs, never below 3); at the primary batch the table shows the decision's side-by-side rounds, 8 runs and 40 ms each at least", section="benchmark"),
    Option("warmup", "int", 10, "warm-up runs per benchmark", section="benchmark"),
    Option("timing_rounds", "int", 5, "interleaved timing rounds when two models are timed side by side", section="benchmark"),
    Option("fallback", "str", None, "when the target's backend is unavailable, also build for this one", choices=("cpu",)),
    Option("triton_repo", "str", None, "also lay out a Triton model repository here", metavar="DIR"),
    Option("seed", "int", 0, "random seed for data subsets and recovery", section="data"),
    Option("cache", "bool", True, "reuse stage outputs whose inputs are unchanged (--no-cache: rerun every stage)"),
)

OPTION_NAMES = {opt.name for opt in OPTIONS}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """argparse flags for every option. Defaults are None so we can tell "not given" from "given"."""
    for opt in OPTIONS:
        kwargs: dict[str, Any] = {"dest": opt.name, "default": None}
        default_text = "" if opt.default in (None, (), False) else f" (default {opt.default})"
        if opt.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] = opt.help
        else:
            kwargs["help"] = opt.help + default_text
            kwargs["type"] = {"int": int, "float": float, "ints": int, "floats": float}.get(opt.kind, str)
            if opt.kind in ("ints", "floats", "strs"):
                kwargs["nargs"] = "+"
                if opt.kind == "strs":  # repeatable and multi-valued: --ignore a b --ignore c
                    kwargs["action"] = "extend"
            if opt.choices:
                kwargs["choices"] = opt.choices
            if opt.metavar:
                kwargs["metavar"] = opt.metavar
        parser.add_argument(_flag(opt.name), **kwargs)


def _coerce(opt: Option, value: Any, where: str) -> Any:
    """Check a config-file value against the option's kind; errors name the key and the file."""

    def fail(expected: str) -> UsageError:
        return UsageError(f"{where}: key {opt.name!r} must be {expected}, got {value!r}")

    scalar: dict[str, Callable[[Any], bool]] = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
    }
    if value is None:
        return None
    if opt.kind in scalar:
        if not scalar[opt.kind](value):
            raise fail(f"a {opt.kind}")
        if opt.choices and value not in opt.choices:
            raise fail(f"one of {', '.join(opt.choices)}")
        return float(value) if opt.kind == "float" else value
    inner = {"ints": "int", "floats": "float", "strs": "str"}[opt.kind]
    items = value if isinstance(value, list) else [value]
    if not all(scalar[inner](v) for v in items):
        raise fail(f"a list of {inner}s")
    return tuple(float(v) if inner == "float" else v for v in items)


def load_config(path: str | Path) -> dict[str, Any]:
    """Options from a TOML file (or a plan.json written by an earlier build, to replay it).

    Keys are the option names with `_` or `-`; a `[build]` table is accepted too.
    An unknown key is an error that suggests the nearest option name.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            data = data.get("options", data)  # a plan.json keeps the options under "options"
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from exc
    if isinstance(data.get("build"), dict):
        data = {**{k: v for k, v in data.items() if k != "build"}, **data["build"]}
    by_name = {opt.name: opt for opt in OPTIONS}
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in by_name:
            if path.suffix == ".json" and key in PLAN_ONLY_KEYS:
                out[key] = value
                continue
            near = difflib.get_close_matches(key, sorted(OPTION_NAMES), n=1)
            raise UsageError(f"{path}: unknown option {raw_key!r}", hint=f"did you mean {near[0]!r}?" if near else "see `hadmc-deploy build --help`")
        out[key] = _coerce(by_name[key], value, str(path))
    return out


#: keys a plan.json carries besides the options (the model and how to load it).
PLAN_ONLY_KEYS = ("model", "arch", "arch_kwargs", "input_shape", "trust_model", "targets_file")


def merge_options(cli: dict[str, Any], config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < config file < command line. `None` on the command line means "not given"."""
    merged: dict[str, Any] = {}
    config = config or {}
    for opt in OPTIONS:
        value = opt.default
        if config.get(opt.name) is not None:
            value = config[opt.name]
        cli_value = cli.get(opt.name)
        if cli_value is not None and not (opt.kind == "strs" and not cli_value):
            value = tuple(cli_value) if isinstance(cli_value, list) else cli_value
        merged[opt.name] = value
    return merged
