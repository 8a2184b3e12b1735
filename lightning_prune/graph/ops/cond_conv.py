"""Conditionally parameterised convolutions (timm's ``CondConv2d``, EfficientNet-CondConv).

``CondConv2d(x, routing_weights)`` mixes ``num_experts`` kernels per sample, stored flat as
``weight[expert, out * in / groups * kh * kw]``, and runs them as one grouped convolution.
Its channels are a convolution's: a leaf with the channel rule of a conv (grouped when
``groups > 1``), whose routing weights (one per expert, not per channel) are pinned. Its
FLOPs scale with its kernel's widths: the convolution and the mixing of the experts'
kernels (``weight_shape`` and ``experts`` attributes).
"""

from __future__ import annotations

from typing import Any

from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["COND_CONVS"]

#: Conditionally parameterised convolutions, by qualified class name (timm is optional).
COND_CONVS = ("timm.layers.cond_conv2d.CondConv2d",)


@register_op(*COND_CONVS, leaf=True)
def _cond_conv(call: Call) -> Op:
    conv: Any = call.module
    attrs = {
        "transposed": False,
        "groups": int(conv.groups),
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "bias": conv.bias is not None,
        "weight_shape": tuple(int(d) for d in conv.weight_shape),
        "experts": int(conv.num_experts),
    }
    return Op("conv", list(call.values()), attrs, module=call.path)
