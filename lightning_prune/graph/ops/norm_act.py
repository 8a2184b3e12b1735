"""Normalisation layers with their activation in one module (timm's EvoNorm and FRN).

EvoNorm's batch variants (``EvoNorm2dB0``, ``B1``, ``B2``) and Filter Response Normalisation
(``FilterResponseNormTlu2d``, ``FilterResponseNormAct2d``) normalise each channel by its own
statistics; EvoNorm's sample variants (``S0`` ... ``S2a``) divide by a statistic over groups
of channels, which ties the channels of a group into one unit (as ``GroupNorm`` does). Each
is a norm: a gate site, with its per-channel parameters sliced with its channels.
"""

from __future__ import annotations

from typing import Any

from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["NORM_ACTS"]

_EVO = "timm.layers.evo_norm.EvoNorm2d"
_FRN = "timm.layers.filter_response_norm.FilterResponseNorm"
#: Norm + activation layers, by qualified class name (timm is optional).
NORM_ACTS = (
    *(f"{_EVO}{v}" for v in ("B0", "B1", "B2", "S0", "S0a", "S1", "S1a", "S2", "S2a")),
    f"{_FRN}Tlu2d",
    f"{_FRN}Act2d",
)


@register_op(*NORM_ACTS, leaf=True)
def _norm_act(call: Call) -> Op:
    norm: Any = call.module
    groups = getattr(norm, "groups", None)
    attrs = {"norm": "norm_act", "num_groups": int(groups) if groups else None}
    return Op("norm", list(call.values()[:1]), attrs, module=call.path)
