"""Mask bookkeeping of the DPP callback: mask logits, the folded marker, checkpoint matching.

A module whose kernel/weight DPP masks were folded into its weights carries :data:`FOLDED_ATTR`
(so that ``setup`` does not put masks back); a checkpoint's keys tell whether it was saved with
masks (:data:`_LOGITS_KEY`) or folded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_prune.dpp import fold_dpp_masks, get_dpp_masks, restore_dpp_masks
from lightning_prune.module import optim as gate_optim

__all__ = [
    "FOLDED_ATTR",
    "dpp_logit_parameters",
    "fold_and_mark",
    "is_folded",
    "isolate_logit_group",
    "match_checkpoint",
]

#: Marks a module whose DPP masks were folded into its weights (so they are not re-applied).
FOLDED_ATTR = "_lp_dpp_folded"
#: ``state_dict`` keys of DPP mask logits (``<layer>.parametrizations.weight.<i>.logits``).
_LOGITS_KEY = re.compile(r"(?:^|\.)parametrizations\.weight\.\d+\.logits$")


def dpp_logit_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The logits of the kernel/weight DPP masks of ``model`` (empty when it has none).

    Example:
        >>> from lightning_prune import dpp
        >>> net = nn.Linear(8, 2)
        >>> _ = dpp.apply_dpp(net, "weight", k=2, n=4)
        >>> [tuple(p.shape) for p in dpp_logit_parameters(net)]
        [(4, 4)]
    """
    return [m.logits for m in get_dpp_masks(model)]


def isolate_logit_group(
    configured: Any, model: nn.Module, lr: float | None, weight_decay: float
) -> int:
    """Move ``model``'s mask logits into their own group of the ``configured`` optimizers.

    Args:
        configured: what ``configure_optimizers`` returned (changed in place).
        model: the module whose :func:`dpp_logit_parameters` are moved.
        lr: the group's base learning rate (``None``: the source group's).
        weight_decay: the group's weight decay.

    Returns:
        How many logit tensors were moved.
    """
    moved = gate_optim.isolate_parameters(
        configured,
        dpp_logit_parameters(model),
        gate_optim.DPP_GROUP_KEY,
        lr,
        weight_decay,
    )
    if moved:
        rank_zero_info(
            f"DynamicProbabilisticPruning: {moved} mask logit tensors in their own optimizer "
            f"group (weight decay {weight_decay})."
        )
    return moved


def is_folded(model: nn.Module) -> bool:
    """Whether ``model``'s masks were folded into its weights (by :func:`fold_and_mark`)."""
    return bool(model.__dict__.get(FOLDED_ATTR))


def fold_and_mark(model: nn.Module) -> list[str]:
    """Fold ``model``'s masks into its weights and mark it folded.

    Returns:
        The names of the layers whose masks were folded.
    """
    folded = fold_dpp_masks(model)
    model.__dict__[FOLDED_ATTR] = True
    return folded


def match_checkpoint(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Give ``model`` masks iff ``state_dict`` has them, so that it loads strictly.

    A checkpoint saved during training (mask logits in it) loaded into a folded model gets
    the masks back; a folded checkpoint (plain weights) loaded into a masked model folds
    the masks first.
    """
    has_logits = any(_LOGITS_KEY.search(key) for key in state_dict)
    masked = bool(get_dpp_masks(model))
    if has_logits and not masked:
        model.__dict__.pop(FOLDED_ATTR, None)
        restore_dpp_masks(model, state_dict)  # exactly the checkpoint's masks
    elif masked and not has_logits:
        fold_and_mark(model)
