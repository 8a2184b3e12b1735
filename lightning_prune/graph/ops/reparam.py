"""Convolutions whose weight is computed from their parameters in forward (reparameterised).

Weight standardisation (timm's ``StdConv2d``, ``ScaledStdConv2d`` and their ``Same``
variants) normalises each output channel's weights over its inputs: slicing output channels
is exact, slicing input channels is not (the statistics span every input). Such a conv is
one operation (a leaf) with the channel rule of a conv; collapse slices its outputs in place
and, when it loses input channels, freezes it into the plain convolution it computes
(:func:`conv_call` recovers that convolution's operands). A conv that pads its input in
forward (dynamic "same" padding) cannot be frozen into a plain conv: its inputs are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_prune.graph.ops.layers import conv_rule
from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["REPARAMETERISED_CONVS", "conv_call"]

#: Weight-standardised convolutions, by qualified class name (timm is optional).
REPARAMETERISED_CONVS = tuple(
    f"timm.layers.std_conv.{name}"
    for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")
)
_CONV_OPS = ("conv1d", "conv2d", "conv3d")
_OPERANDS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


class _Capture(TorchFunctionMode):
    """Records the operands of every convolution called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _CONV_OPS:
            found = {
                n: args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(_OPERANDS)
            }
            self.calls.append({n: _DEFAULTS.get(n) if v is None else v for n, v in found.items()})
        return func(*args, **kwargs)


def conv_call(conv: nn.modules.conv._ConvNd) -> dict[str, Any] | None:
    """The operands of the one convolution ``conv``'s forward computes, weight included.

    ``None`` when its forward does not call exactly one convolution on its own input (it
    pads the input first, or calls several).
    """
    sizes = [d * (k - 1) + 1 for d, k in zip(_tuple(conv.dilation), conv.kernel_size)]
    weight = conv.weight
    x = torch.zeros(1, conv.in_channels, *sizes, dtype=weight.dtype, device=weight.device)
    capture = _Capture()
    with torch.no_grad(), capture:
        conv(x)
    if len(capture.calls) != 1 or capture.calls[0]["input"] is not x:
        return None
    found = capture.calls[0]
    return {n: found[n] for n in _OPERANDS[1:]}


def _tuple(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


@register_op(*REPARAMETERISED_CONVS, leaf=True)
def _reparameterised(call: Call) -> Op:
    op = conv_rule(call)
    conv = call.module
    assert isinstance(conv, nn.modules.conv._ConvNd)
    if conv_call(conv) is None:
        op.attrs["fixed_inputs"] = f"{type(conv).__name__} `{call.path}` (padded in forward)"
    return op
