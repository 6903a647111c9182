"""The pruning architecture matrix: which models, at which input sizes.

`MATRIX` maps name -> (builder, small input shape for the default tests, full
input shape). `TORCHVISION` names torchvision's own definitions, built through
`--arch torchvision:NAME?kwargs` (`hadmc_deploy.loading.build_arch`) only where
torchvision is installed: nothing here imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from hadmc_deploy.loading import build_arch
from hadmc_deploy.models.everyday import c2f_net, factorised_net, ghost_cbam_net, onet
from hadmc_deploy.models.zoo import (
    _bn_random,
    convnext_tiny,
    densenet121,
    efficientnet_b0,
    inception_small,
    mobilenet_v2_bn,
    mobilenet_v3_small,
    regnet_x_200mf,
    resnet18_bn,
    resnet50_bn,
    shufflenet_v2_x1_0,
    unetish,
    vgg11_bn,
    vgg11_bn_small_head,
)

Entry = tuple[Callable[[], nn.Module], tuple[int, ...], tuple[int, ...]]

MATRIX: dict[str, Entry] = {
    "resnet18": (resnet18_bn, (1, 3, 64, 64), (1, 3, 224, 224)),
    "resnet50": (resnet50_bn, (1, 3, 64, 64), (1, 3, 224, 224)),
    "mobilenet_v2": (mobilenet_v2_bn, (1, 3, 64, 64), (1, 3, 224, 224)),
    "mobilenet_v3_small": (mobilenet_v3_small, (1, 3, 64, 64), (1, 3, 224, 224)),
    "efficientnet_b0": (efficientnet_b0, (1, 3, 64, 64), (1, 3, 224, 224)),
    "shufflenet_v2_x1_0": (shufflenet_v2_x1_0, (1, 3, 64, 64), (1, 3, 224, 224)),
    "densenet121": (densenet121, (1, 3, 32, 32), (1, 3, 224, 224)),
    "vgg11_bn_head512": (vgg11_bn_small_head, (1, 3, 32, 32), (1, 3, 224, 224)),
    "regnet_x_200mf": (regnet_x_200mf, (1, 3, 64, 64), (1, 3, 224, 224)),
    "convnext_tiny_reduced": (convnext_tiny, (1, 3, 64, 64), (1, 3, 224, 224)),
    "inception_small": (inception_small, (1, 3, 64, 64), (1, 3, 224, 224)),
    "unet_groupnorm_prelu_convtranspose": (unetish, (1, 3, 32, 32), (1, 3, 128, 128)),
    "mtcnn_onet_3_outputs": (onet, (2, 3, 48, 48), (2, 3, 48, 48)),
    "c2f_backbone_dict_outputs": (c2f_net, (1, 3, 64, 64), (1, 3, 224, 224)),
    "ghost_cbam_channel_gates": (ghost_cbam_net, (1, 3, 64, 64), (1, 3, 224, 224)),
    "factorised_dilated_split": (factorised_net, (1, 3, 64, 64), (1, 3, 224, 224)),
}
#: full-size entries only run with -m slow / in tools/prune_matrix.py
SLOW_ONLY: dict[str, Entry] = {"vgg11_bn": (vgg11_bn, (1, 3, 32, 32), (1, 3, 224, 224))}

#: torchvision architectures (random weights) as `--arch` specs
TORCHVISION_SPECS: dict[str, str] = {
    "resnet50": "torchvision:resnet50",
    "mobilenet_v3_large": "torchvision:mobilenet_v3_large",
    "efficientnet_b0": "torchvision:efficientnet_b0",
    "regnet_y_400mf": "torchvision:regnet_y_400mf",
    "shufflenet_v2_x1_0": "torchvision:shufflenet_v2_x1_0",
    "convnext_tiny": "torchvision:convnext_tiny",
    "densenet121": "torchvision:densenet121",
    # aux classifiers only run in training; without them the eval graph is the whole model
    "googlenet": "torchvision:googlenet?aux_logits=false&init_weights=true",
}


def torchvision_model(spec: str) -> nn.Module:
    """A torchvision model at random init, with random BN statistics and layer scales (ConvNeXt's
    start at 1e-6), so norms are not identities and residual branches move the output in the checks."""
    model = _bn_random(build_arch(spec))
    g = torch.Generator().manual_seed(3)
    for name, param in model.named_parameters():
        if name.rpartition(".")[2] == "layer_scale":
            param.data.copy_(torch.rand(param.shape, generator=g) * 0.5 + 0.5)
    return model


TORCHVISION: dict[str, Entry] = {
    f"tv_{name}": (partial(torchvision_model, spec), (1, 3, 64, 64), (1, 3, 224, 224)) for name, spec in TORCHVISION_SPECS.items()
}
