"""Models: CIFAR ResNets, small demo networks, and builders for torchvision and smp by name.

Example:
    >>> from lightning_prune.models import build_model
    >>> build_model("small_cnn", num_classes=4, in_channels=1).fc.out_features
    4
"""

from lightning_prune.models.builders import (
    MODEL_FAMILIES,
    MODELS,
    UnknownModelError,
    WeightsUnavailableError,
    build_model,
    register_model,
    register_model_family,
)
from lightning_prune.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    cifar_resnet20,
    cifar_resnet32,
    cifar_resnet44,
    cifar_resnet56,
    cifar_resnet110,
)
from lightning_prune.models.layers import ConvBNReLU, DoubleConv
from lightning_prune.models.small_cnn import SmallCNN
from lightning_prune.models.tiny_unet import TinyUNet

__all__ = [
    "MODELS",
    "MODEL_FAMILIES",
    "BasicBlock",
    "CifarResNet",
    "ConvBNReLU",
    "DoubleConv",
    "SmallCNN",
    "TinyUNet",
    "UnknownModelError",
    "WeightsUnavailableError",
    "build_model",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "register_model",
    "register_model_family",
]
