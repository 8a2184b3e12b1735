"""Collapse of convolutions whose weight is computed in forward (weight standardisation).

Their outputs are sliced in place, with every per-output-channel parameter (``gain``). When
they lose input channels, they are first frozen into the plain convolution they compute
(:func:`freeze`), whose weights then slice exactly; the plan marks them ``"frozen"`` so that
:func:`~lightning_prune.apply_channel_plan` does the same on a fresh model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.graph.ops.reparam import REPARAMETERISED_CONVS, conv_call
from lightning_prune.surgery.resize import Index, register_slicer, slice_conv

__all__ = ["freeze", "is_reparameterised"]


def is_reparameterised(module: nn.Module) -> bool:
    """Whether ``module`` computes its weight in forward (see ``REPARAMETERISED_CONVS``)."""
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(module).__mro__}
    return bool(names & set(REPARAMETERISED_CONVS))


def _torch_class(module: nn.Module) -> Any:
    """The ``torch.nn`` convolution class ``module`` derives from."""
    return next(c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(module, c))


def freeze(conv: nn.Module) -> nn.modules.conv._ConvNd:
    """The plain convolution ``conv`` computes (its weight as it is now).

    Raises:
        ValueError: when ``conv`` does not compute one convolution of its own input.
    """
    assert isinstance(conv, nn.modules.conv._ConvNd)
    found = conv_call(conv)
    if found is None:
        raise ValueError(f"{type(conv).__name__} pads its input in forward: cannot freeze it.")
    weight, bias = found["weight"], found["bias"]
    plain = _torch_class(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=found["stride"],
        padding=found["padding"],
        dilation=found["dilation"],
        groups=found["groups"],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None and plain.bias is not None:
            plain.bias.copy_(bias)
    plain.train(conv.training)
    return plain


@register_slicer(*REPARAMETERISED_CONVS)
def _slice_outputs(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    """Slice the outputs (the caller froze the conv if its inputs shrink)."""
    conv: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
    width = conv.out_channels
    entry = slice_conv(conv, in_idx, out_idx)
    if out_idx is None:
        return entry
    for name, value in list(conv.named_parameters(recurse=False)):
        if name not in ("weight", "bias") and value.ndim and value.shape[0] == width:
            kept = value.detach().index_select(0, out_idx.to(value.device)).clone()
            setattr(conv, name, nn.Parameter(kept, requires_grad=value.requires_grad))
    return entry
