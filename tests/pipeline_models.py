"""Tiny models and data for the pipeline tests: a small CNN trained for a few seconds on
scikit-learn's 8x8 digits (real data, 10 classes), saved as a hadmc-deploy checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
TINY_ARCH = f"{HERE / 'pipeline_models.py'}:tiny_cnn"
TINY_SHAPE = (1, 1, 16, 16)
DIGITS_TRAIN = "builtin:digits:train"
DIGITS_TEST = "builtin:digits:test"


def tiny_cnn(num_classes: int = 10, width: int = 48) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


def train_tiny(path: Path, *, seed: int = 0, epochs: int = 4) -> Path:
    """Train the tiny CNN on digits and save {arch, state_dict, input_shape}."""
    from hadmc_deploy.data import Preprocess, load_data
    from hadmc_deploy.train import train_classifier

    torch.manual_seed(seed)
    model = tiny_cnn()
    train_classifier(model, load_data(DIGITS_TRAIN, Preprocess(resize=TINY_SHAPE[2:])), epochs=epochs, lr=0.1, batch_size=32, seed=seed)
    torch.save({"arch": TINY_ARCH, "arch_kwargs": {}, "state_dict": model.state_dict(), "input_shape": list(TINY_SHAPE)}, path)
    return path
