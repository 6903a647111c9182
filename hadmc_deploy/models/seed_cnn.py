"""The HAD-MC 2.0 seed report's CNN, rebuilt to check its claims on a real task.

Three 3x3 convs (3->32->64->128), each with BatchNorm, ReLU and a 2x max-pool, at
224x224 input, then Linear(128*28*28 -> 256), ReLU, Linear(256 -> 2): exactly
25,784,578 parameters, the count the report gives. 99.6% of them sit in the first
Linear layer, which is why a parameter cut says little about latency here.
"""

from __future__ import annotations

from torch import nn

SEED_CNN_ARCH = "hadmc_deploy.models.seed_cnn:seed_cnn"
SEED_CNN_INPUT_SHAPE = (1, 3, 224, 224)
SEED_CNN_PARAMS = 25_784_578


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2)]


def seed_cnn(num_classes: int = 2, in_channels: int = 3) -> nn.Sequential:
    return nn.Sequential(
        *_block(in_channels, 32),
        *_block(32, 64),
        *_block(64, 128),
        nn.Flatten(),
        nn.Linear(128 * 28 * 28, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )
