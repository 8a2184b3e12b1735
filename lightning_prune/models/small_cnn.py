"""A tiny residual CNN for the embedded offline demo (16x16 or 32x32 images)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.models.cifar_resnet import BasicBlock
from lightning_prune.models.layers import ConvBNReLU, init_weights

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stem, two strided stages each ending in a residual block, linear head.

    Layout for ``width=w``: ``stem`` (w channels, full resolution) -> ``stage1`` (2w, /2) ->
    ``stage2`` (4w, /4) -> global average pool -> ``fc``. About 0.12 M parameters at the default
    width; it trains for a few epochs on a laptop CPU in well under a minute on 16x16 inputs.

    Args:
        num_classes: outputs of the classifier ``fc``.
        in_channels: channels of the input images (1 for grayscale, 3 for RGB).
        width: channels of the stem; the stages use ``2 * width`` and ``4 * width``.

    Example:
        >>> model = SmallCNN(num_classes=4, in_channels=1)
        >>> model(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 4])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if min(num_classes, in_channels, width) < 1:
            raise ValueError(
                "num_classes, in_channels and width must be positive, got "
                f"{num_classes}, {in_channels}, {width}."
            )
        self.stem = ConvBNReLU(in_channels, width)
        self.stage1 = nn.Sequential(
            ConvBNReLU(width, 2 * width, stride=2), BasicBlock(2 * width, 2 * width)
        )
        self.stage2 = nn.Sequential(
            ConvBNReLU(2 * width, 4 * width, stride=2), BasicBlock(4 * width, 4 * width)
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)``."""
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))
