"""Tiny CNNs on scikit-learn's digits (1x8x8) for the recovery and DDP tests."""

from __future__ import annotations

import torch
from torch import nn

from hadmc_deploy.data import ArrayDataset, Preprocess, load_data
from hadmc_deploy.train import train_classifier


class TinyNet(nn.Module):
    """stem -> block1 -> block2 (stride 2) -> pool -> fc; `width` sets the channel counts."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_data("builtin:digits:train", Preprocess()), load_data("builtin:digits:test", Preprocess())


def trained_teacher(train: ArrayDataset, width: int = 16, epochs: int = 4, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(width)
    return train_classifier(model, train, epochs=epochs, lr=0.1, batch_size=64, seed=seed)
