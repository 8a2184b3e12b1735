"""Slicing conditionally parameterised convolutions (timm's ``CondConv2d``).

Each expert's kernel is stored flat (``weight[expert, out * in / groups * kh * kw]``): it is
viewed as ``[expert, out, in / groups, kh, kw]``, sliced like a conv's and flattened back.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_prune.graph.ops.cond_conv import COND_CONVS
from lightning_prune.surgery.resize import Index, register_slicer

__all__: list[str] = []


@register_slicer(*COND_CONVS)
def _slice_cond_conv(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    conv: Any = module
    experts, groups = conv.num_experts, conv.groups
    cin, cout = conv.in_channels, conv.out_channels
    new_in = cin if in_idx is None else len(in_idx)
    new_out = cout if out_idx is None else len(out_idx)
    new_groups = 1 if groups == 1 else new_in // (cin // groups)
    weight = conv.weight.detach().view(experts, *conv.weight_shape)
    if out_idx is not None:
        weight = weight.index_select(1, out_idx.to(weight.device))
    if in_idx is not None and groups == 1:
        weight = weight.index_select(2, in_idx.to(weight.device))
    conv.weight = nn.Parameter(
        weight.reshape(experts, -1).clone(), requires_grad=conv.weight.requires_grad
    )
    if conv.bias is not None and out_idx is not None:
        bias = conv.bias.detach().index_select(1, out_idx.to(conv.bias.device)).clone()
        conv.bias = nn.Parameter(bias, requires_grad=conv.bias.requires_grad)
        conv.bias_shape = (new_out,)
    conv.in_channels, conv.out_channels, conv.groups = new_in, new_out, new_groups
    conv.weight_shape = (new_out, new_in // new_groups, *conv.kernel_size)
    return {"in": [cin, new_in], "out": [cout, new_out], "groups": [groups, new_groups]}
