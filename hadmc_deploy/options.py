"""Typed option sections: what each stage reads, as dataclasses instead of string lookups.

Why: `config.OPTIONS` is the one table the CLI flags and the TOML keys come from; the
stages must not look options up by string (a typo is a KeyError at stage nine). Each
option names its section in the table, and `BuildOptions.from_values` builds these
frozen dataclasses from the merged values. `tests/test_config_precedence.py` checks that
every option has exactly one field in its section, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class OutputOptions:
    target: str
    out: str | None
    fallback: str | None
    triton_repo: str | None
    cache: bool


@dataclass(frozen=True)
class SearchOptions:
    speedup: float | None
    latency_ms: float | None
    ratio: float | None
    macs_ratio: float | None
    search: str
    widths: str | None
    importance: str
    data: str | None
    importance_samples: int
    episodes: int
    joint_precision: bool
    round_to: int | None
    min_keep_ratio: float
    ignore: tuple[str, ...]
    budget_rounds: int

    @property
    def has_budget(self) -> bool:
        """Whether anything asks for narrower layers (a latency budget, a ratio or a given plan)."""
        return any(v is not None for v in (self.speedup, self.latency_ms, self.ratio, self.macs_ratio, self.widths))

    @property
    def latency_budget(self) -> bool:
        return self.speedup is not None or self.latency_ms is not None


@dataclass(frozen=True)
class LatencyOptions:
    lut: str | None
    measure_lut: bool | None
    lut_minutes: float


@dataclass(frozen=True)
class DataOptions:
    task: str | None
    train: str | None
    calib: str | None
    eval: str | None
    train_limit: int | None
    calib_samples: int
    eval_limit: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    seed: int

    @property
    def calib_source(self) -> str | None:
        return self.calib or self.train


@dataclass(frozen=True)
class RecoverySettings:
    """The build's recovery options (`recover.RecoveryOptions` is the trainer's own, derived from these)."""

    epochs: float
    lr: float
    batch_size: int
    distill: bool
    kd_temperature: float
    kd_alpha: float
    feature_weight: float
    feature_layers: tuple[str, ...]


@dataclass(frozen=True)
class QuantizationOptions:
    precision: str | None
    calib_method: str
    max_accuracy_drop: float | None
    allow_accuracy_drop: bool


@dataclass(frozen=True)
class BenchmarkOptions:
    batch: tuple[int, ...] | None
    runs: int
    warmup: int
    timing_rounds: int


SECTIONS: dict[str, type] = {
    "output": OutputOptions,
    "search": SearchOptions,
    "latency": LatencyOptions,
    "data": DataOptions,
    "recovery": RecoverySettings,
    "quantization": QuantizationOptions,
    "benchmark": BenchmarkOptions,
}


@dataclass(frozen=True)
class BuildOptions:
    output: OutputOptions
    search: SearchOptions
    latency: LatencyOptions
    data: DataOptions
    recovery: RecoverySettings
    quantization: QuantizationOptions
    benchmark: BenchmarkOptions

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> BuildOptions:
        """Sections from the merged option values (`config.merge_options`)."""
        from hadmc_deploy.config import OPTIONS

        by_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for opt in OPTIONS:
            by_section[opt.section][opt.name] = values[opt.name]
        return cls(**{name: SECTIONS[name](**kwargs) for name, kwargs in by_section.items()})


def section_fields(section: str) -> set[str]:
    return {f.name for f in fields(SECTIONS[section])}
