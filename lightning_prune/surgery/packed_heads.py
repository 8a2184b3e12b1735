"""Attention modules with one packed query / key / value projection, pruned by heads.

torchvision's Swin window attention and MaxViT relative attention both project their input
with one linear layer whose rows are ``[q | k | v]``, each split into ``heads`` blocks of
``head_dim`` rows, and both derive a width from their input that no longer holds once heads
are removed. :func:`register_packed_heads` registers such a class once: gating switches it
to its compact subclass (which reads the widths from its weights and applies the gate), the
slicer keeps the rows of the kept heads and updates the head count, and magnitude seeding
reads the packed projection.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lightning_prune.surgery.gating import register_fused_site
from lightning_prune.surgery.resize import Index, Slicer, _set_param, _take, register_slicer
from lightning_prune.surgery.roles import PROJECTIONS

__all__ = ["register_packed_heads"]


def _slicer(projection: str, heads_attr: str, compact: type[nn.Module]) -> Slicer:
    def slice_heads(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
        """Keep the q / k / v rows of the kept heads (a per-head table is sliced as a param)."""
        linear: nn.Linear = getattr(module, projection)
        rows, cols = linear.out_features, linear.in_features
        heads = int(getattr(module, heads_attr))
        head_dim = rows // 3 // heads
        _set_param(linear, "weight", _take(_take(linear.weight, 0, out_idx), 1, in_idx))
        _set_param(linear, "bias", _take(linear.bias, 0, out_idx))
        linear.out_features, linear.in_features = (int(d) for d in linear.weight.shape)
        kept = linear.out_features // 3 // head_dim
        setattr(module, heads_attr, kept)
        if kept != heads or linear.in_features != cols:
            module.__class__ = compact
        return {
            "in": [cols, linear.in_features],
            "out": [rows, linear.out_features],
            heads_attr: [heads, kept],
        }

    return slice_heads


def register_packed_heads(
    base: type[nn.Module],
    compact: type[nn.Module],
    prunable: Callable[[nn.Module], bool],
    projection: str,
    heads_attr: str,
) -> None:
    """Gate, slice and seed ``base`` by heads of its packed projection.

    Args:
        base: the attention class.
        compact: its subclass whose forward reads the widths from the weights and multiplies
            the projection's output by the gate values when it is a gate site.
        prunable: whether a given module's heads can be pruned.
        projection: attribute name of the packed ``nn.Linear`` (``qkv``, ``to_qkv``).
        heads_attr: attribute name of the head count (``num_heads``, ``n_heads``).
    """
    register_fused_site(base, compact, prunable, keep=True)
    register_slicer(base)(_slicer(projection, heads_attr, compact))

    def packed(module: nn.Module) -> tuple[object, object]:
        linear = getattr(module, projection)
        return linear.weight, linear.bias

    PROJECTIONS[base] = packed
