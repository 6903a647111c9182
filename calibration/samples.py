"""How few calibration samples are too few: checked where a build reads --calib-samples (before any
stage runs) and again where calibration takes its subset. A light module so that reading the
options does not import ONNX."""

from __future__ import annotations

from hadmc_deploy.errors import DataError

MIN_CALIBRATION_SAMPLES = 16  # fewer images give thresholds that are mostly noise


def check_calib_samples(num_samples: int) -> None:
    """Raises DataError, naming the fix, for fewer than MIN_CALIBRATION_SAMPLES."""
    if num_samples < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"--calib-samples {num_samples} is too few", hint=f"calibration needs at least {MIN_CALIBRATION_SAMPLES} samples; 512 is the default")


def check_calib_set(source: str, count: int) -> None:
    """Raises DataError, naming the fix, for a calibration set of fewer than MIN_CALIBRATION_SAMPLES images."""
    if count < MIN_CALIBRATION_SAMPLES:
        raise DataError(f"calibration data {source} has only {count} samples",
                        hint=f"calibration needs at least {MIN_CALIBRATION_SAMPLES} (512 recommended); pass a larger --calib set")
