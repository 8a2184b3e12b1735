"""Per-layer widths, for width tables and plots."""

from __future__ import annotations

from torch import nn


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer, by module path.

    Example:
        >>> layer_widths(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)))
        {'0': 8, '2': 4}
    """
    widths: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = int(module.out_channels)
        elif isinstance(module, nn.Linear):
            widths[name] = int(module.out_features)
    return widths
