"""A tiny U-Net for the procedural segmentation demo."""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.models.layers import DoubleConv, init_weights

__all__ = ["TinyUNet"]


class TinyUNet(nn.Module):
    """U-Net with ``depth`` max-pool downsamplings and ConvTranspose2d upsamplings.

    Encoder stage ``i`` has ``base_width * 2**i`` channels; the bottleneck has
    ``base_width * 2**depth``. Each decoder stage upsamples with ``ConvTranspose2d`` (stride 2)
    followed by BN + ReLU, concatenates the encoder skip (``torch.cat`` on channels, skip
    first) and applies two conv-BN-ReLU layers. A 1x1 convolution ``head`` gives per-pixel
    logits. Height and width must be divisible by ``2**depth`` (not checked in ``forward`` so
    that the model stays ``torch.fx`` traceable). About 0.48 M parameters at the defaults.

    Args:
        num_classes: output channels (per-pixel logits).
        in_channels: channels of the input images.
        base_width: channels of the first encoder stage.
        depth: number of downsamplings (2 or 3 for the demo; at least 1).

    Example:
        >>> model = TinyUNet(num_classes=3, in_channels=1, base_width=8, depth=2)
        >>> model(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self, num_classes: int = 2, in_channels: int = 3, base_width: int = 16, depth: int = 3
    ) -> None:
        super().__init__()
        if min(num_classes, in_channels, base_width, depth) < 1:
            raise ValueError(
                "num_classes, in_channels, base_width and depth must be positive, got "
                f"{num_classes}, {in_channels}, {base_width}, {depth}."
            )
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(DoubleConv(previous, width))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1])
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamples.append(
                nn.Sequential(
                    nn.ConvTranspose2d(2 * width, width, kernel_size=2, stride=2, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                )
            )
            self.decoders.append(DoubleConv(2 * width, width))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes, H, W)``."""
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamples, self.decoders, reversed(skips)):
            x = decoder(torch.cat([skip, upsample(x)], dim=1))
        return self.head(x)
