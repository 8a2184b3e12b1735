"""LayerNorm over the kept channels: the embedding width of a transformer, pruned exactly.

A LayerNorm's statistics mix all the channels it normalises, so removing one changes the
others. With ``augment(..., embedding="renormalize")`` every such LayerNorm is a gate site
that weighs each channel by its gate value in the statistics and multiplies its output by
it (:class:`MaskedLayerNorm`)::

    mean = sum(g * x) / sum(g)
    var  = sum(g * (x - mean) ** 2) / sum(g)
    y    = g * ((x - mean) / sqrt(var + eps) * weight + bias)

With every gate open it is the LayerNorm; with hard 0/1 gates it is the LayerNorm of the
kept channels, which is exactly the collapsed model's (smaller) ``nn.LayerNorm``. So the
gated and the compact model agree; what changes, once channels close, is the function the
network computes compared with the dense one, which training adapts to (as it does for every
removed channel). Closed channels need not be zero in the residual stream: the statistics
ignore them and every reader of the stream is such a LayerNorm or a gated layer.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_prune.surgery.gating import SITE_ATTR, register_fused_site
from lightning_prune.surgery.resize import Index, _set_param, _take, register_slicer

__all__ = ["MaskedLayerNorm", "layer_norm_axis"]

#: Instance attribute: the dimension a LayerNorm normalises (-1, or 1 for channels-first).
AXIS_ATTR = "_lp_norm_axis"


def layer_norm_axis(module: nn.Module) -> int:
    """The dimension ``module`` normalises: -1 (``nn.LayerNorm``) or 1 (channels-first)."""
    return int(module.__dict__.get(AXIS_ATTR, -1))


def masked_layer_norm(
    x: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    axis: int = -1,
) -> torch.Tensor:
    """LayerNorm of ``x`` along ``axis`` with per-channel weights ``gate`` in its statistics."""
    if axis != -1:
        x = x.movedim(axis, -1)
    g = gate.to(x.dtype)
    total = g.sum().clamp_min(torch.finfo(x.dtype).tiny)
    mean = (x * g).sum(-1, keepdim=True) / total
    centred = x - mean
    var = (centred.square() * g).sum(-1, keepdim=True) / total
    y = centred * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    y = y * g
    return y.movedim(-1, axis) if axis != -1 else y


class MaskedLayerNorm(nn.LayerNorm):
    """A LayerNorm gate site: statistics over the open channels (see the module docstring)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        gate = getattr(self, SITE_ATTR)()
        axis = layer_norm_axis(self)
        return masked_layer_norm(input, gate, self.weight, self.bias, self.eps, axis)


def _one_dim(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1


register_fused_site(nn.LayerNorm, MaskedLayerNorm, _one_dim)


@register_slicer(nn.LayerNorm)
def _slice_layer_norm(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    norm: nn.LayerNorm = module  # type: ignore[assignment]
    c = int(norm.normalized_shape[-1])
    for name in ("weight", "bias"):
        _set_param(norm, name, _take(getattr(norm, name), 0, out_idx))
    new = c if out_idx is None else len(out_idx)
    norm.normalized_shape = (*norm.normalized_shape[:-1], new)
    return {"out": [c, new]}
