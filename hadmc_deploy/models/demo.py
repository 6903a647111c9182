"""The demo's model: a small residual CNN for 1x28x28 Fashion-MNIST.

Wide enough (32-64-128 channels) that pruning has something to remove and the
latency model something to measure; a stride-2 stem (28 -> 14) keeps training to
about a minute on two cores.
"""

from __future__ import annotations

from hadmc_deploy.models.resnet import BasicBlock, ResNet


def demo_cnn(num_classes: int = 10, in_channels: int = 1) -> ResNet:
    return ResNet(BasicBlock, [1, 1, 1], num_classes, in_channels, widths=(32, 64, 128), small_input=True, stem_stride=2)


DEMO_ARCH = "hadmc_deploy.models.demo:demo_cnn"
DEMO_INPUT_SHAPE = (1, 1, 28, 28)
