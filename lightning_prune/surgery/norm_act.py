"""Slicing norm + activation layers (EvoNorm, FRN): per-channel tensors and group count."""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_prune.graph.ops.norm_act import NORM_ACTS
from lightning_prune.surgery.resize import Index, register_slicer

__all__: list[str] = []


@register_slicer(*NORM_ACTS)
def _slice_norm_act(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    norm: Any = module
    width = int(norm.weight.numel())
    if out_idx is None:
        return {"out": [width, width]}
    for name, value in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
        if value is None or value.ndim != 1 or value.numel() != width:
            continue
        kept = value.detach().index_select(0, out_idx.to(value.device)).clone()
        if isinstance(value, nn.Parameter):
            kept = nn.Parameter(kept, requires_grad=value.requires_grad)
        setattr(norm, name, kept)
    entry: dict[str, Any] = {"out": [width, len(out_idx)]}
    groups = getattr(norm, "groups", None)
    if isinstance(groups, int) and groups > 0:
        norm.groups = len(out_idx) // (width // groups)
        entry["groups"] = [groups, norm.groups]
    return entry
