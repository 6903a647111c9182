"""Calibration: data readers, activation-range estimation, QDQ writing, TensorRT calibration cache."""
