"""CIFAR ResNets (He et al., 2016): three stages of BasicBlocks, depth ``6n + 2``.

The stem is a single 3x3 convolution (no max-pool); the stages have 16, 32 and 64 channels
(times ``width``) at strides 1, 2, 2. Shortcuts are identities when the shape is preserved and
1x1 convolution + BatchNorm projections otherwise (option B of the paper). Every block owns its
ReLU modules and the forward has no data-dependent control flow, so the models trace with
``torch.fx.symbolic_trace``.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.models.layers import init_weights

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
]

STAGE_CHANNELS: tuple[int, int, int] = (16, 32, 64)
STAGE_STRIDES: tuple[int, int, int] = (1, 2, 2)


def _scaled(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, keeping at least one channel."""
    return max(1, round(channels * width))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    Args:
        in_channels: channels of the block input.
        out_channels: channels of the block output.
        stride: stride of the first convolution (and of the projection shortcut).

    Example:
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 images with ``(depth - 2) / 6`` BasicBlocks per stage.

    Any input size works (global average pooling before the classifier ``fc``).

    Args:
        depth: total number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: outputs of the final linear layer ``fc``.
        in_channels: channels of the input images.
        width: multiplier applied to the 16/32/64 stage widths.
        zero_init_residual: start each block's last BN at zero scale, so blocks begin as
            identities (off by default, as in the paper).

    Example:
        >>> model = CifarResNet(depth=20, num_classes=10)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in model.parameters())
        272474
    """

    def __init__(
        self,
        depth: int = 56,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"CifarResNet depth must be 6n + 2 with n >= 1 (e.g. 20, 56), got {depth}."
            )
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}.")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}."
            )
        self.depth = depth
        blocks_per_stage = (depth - 2) // 6
        channels = [_scaled(c, width) for c in STAGE_CHANNELS]

        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU()
        stages: list[nn.Sequential] = []
        previous = channels[0]
        for out_channels, stride in zip(channels, STAGE_STRIDES):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(BasicBlock(previous, out_channels, stride if index == 0 else 1))
                previous = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """Kaiming-normal (fan-out) convolutions, unit BN scales, zero biases."""
        init_weights(self)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def cifar_resnet20(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-20 for CIFAR (about 0.27 M parameters).

    Example:
        >>> cifar_resnet20()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return CifarResNet(20, num_classes, in_channels, width)


def cifar_resnet32(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-32 for CIFAR (about 0.46 M parameters).

    Example:
        >>> cifar_resnet32(num_classes=100).fc.out_features
        100
    """
    return CifarResNet(32, num_classes, in_channels, width)


def cifar_resnet44(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-44 for CIFAR (about 0.66 M parameters).

    Example:
        >>> cifar_resnet44(in_channels=1).conv1.in_channels
        1
    """
    return CifarResNet(44, num_classes, in_channels, width)


def cifar_resnet56(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-56 for CIFAR (about 0.85 M parameters).

    Example:
        >>> cifar_resnet56(width=0.5).layer3[0].conv1.out_channels
        32
    """
    return CifarResNet(56, num_classes, in_channels, width)


def cifar_resnet110(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> CifarResNet:
    """ResNet-110 for CIFAR (about 1.7 M parameters).

    Example:
        >>> len(cifar_resnet110().layer1)
        18
    """
    return CifarResNet(110, num_classes, in_channels, width)
