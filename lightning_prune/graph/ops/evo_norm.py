"""EvoNorm (timm's ``EvoNorm2d*``): normalisation and activation in one layer.

The batch variants (``B0``, ``B1``, ``B2``) normalise each channel by its own statistics; the
sample variants (``S0`` ... ``S2a``) divide by a statistic over groups of channels, which
ties the channels of a group into one unit (as ``GroupNorm`` does). Either way the layer is a
norm: a gate site, with per-channel parameters sliced with its channels.
"""

from __future__ import annotations

from typing import Any

from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["EVO_NORMS"]

_EVO = "timm.layers.evo_norm.EvoNorm2d"
#: EvoNorm layers, by qualified class name (timm is optional).
EVO_NORMS = tuple(f"{_EVO}{v}" for v in ("B0", "B1", "B2", "S0", "S0a", "S1", "S1a", "S2", "S2a"))


@register_op(*EVO_NORMS, leaf=True)
def _evo_norm(call: Call) -> Op:
    norm: Any = call.module
    groups = getattr(norm, "groups", None)
    attrs = {"norm": "evo", "num_groups": int(groups) if groups else None}
    return Op("norm", list(call.values()[:1]), attrs, module=call.path)
