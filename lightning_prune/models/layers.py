"""Small building blocks shared by the demo models."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvBNReLU", "DoubleConv", "init_weights"]


class ConvBNReLU(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with "same" padding for odd kernels.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.

    Example:
        >>> import torch
        >>> ConvBNReLU(3, 8, stride=2)(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 8, 8, 8])
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class DoubleConv(nn.Sequential):
    """Two :class:`ConvBNReLU` layers, the U-Net stage.

    Example:
        >>> import torch
        >>> DoubleConv(3, 8)(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) conv weights, unit BN scales, zero biases; in place.

    Example:
        >>> init_weights(ConvBNReLU(3, 8))
    """
    for child in module.modules():
        if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(child.weight, mode="fan_out", nonlinearity="relu")
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.BatchNorm2d):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
        elif isinstance(child, nn.Linear):
            nn.init.kaiming_normal_(child.weight, nonlinearity="linear")
            nn.init.zeros_(child.bias)
