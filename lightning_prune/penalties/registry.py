"""The penalty-term registry :data:`PENALTIES` and its built-in terms.

A term is ``fn(ctx: PenaltyContext, **options) -> Tensor``, registered by name with
:func:`register_penalty`; the built-in ones (``structure``, ``l1``, ``basis``, ``dpp_entropy``)
wrap the pure functions of :mod:`lightning_prune.penalties.functions`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_prune._registry import Registry
from lightning_prune.dpp.diagnostics import dpp_entropy_penalty
from lightning_prune.penalties.context import CostKind, PenaltyContext
from lightning_prune.penalties.functions import (
    basis_penalty,
    fence_penalty,
    gate_l1,
    structure_loss,
)

__all__ = [
    "GATELESS_FIX",
    "PENALTIES",
    "PenaltyFn",
    "basis_term",
    "dpp_entropy_term",
    "fence_term",
    "l1_term",
    "penalty_needs_gates",
    "register_penalty",
    "structure_term",
]

#: ``fn(ctx, **options) -> Tensor``: one unweighted penalty term.
PenaltyFn = Callable[..., torch.Tensor]

PENALTIES: Registry[PenaltyFn] = Registry("penalty")
_NEEDS_GATES: dict[str, bool] = {}


def register_penalty(name: str, needs_gates: bool = True) -> Callable[[PenaltyFn], PenaltyFn]:
    """Decorator registering a term ``fn(ctx: PenaltyContext, **options) -> Tensor``.

    Args:
        name: the term's name (what ``PenaltyTerm(name=...)`` and YAML configs use).
        needs_gates: whether the term reads channel gates (``ctx.gates``, probabilities,
            costs). Terms that do not (e.g. ``dpp_entropy``) are the only ones allowed on a
            module without channel gates (``gate: none``).

    Example:
        >>> @register_penalty("l2_demo")
        ... def l2_demo(ctx: PenaltyContext) -> torch.Tensor:
        ...     return sum((p**2).mean() for p in ctx.probabilities())
        >>> "l2_demo" in PENALTIES, penalty_needs_gates("l2_demo")
        (True, True)
    """
    register = PENALTIES.register(name)

    def decorator(fn: PenaltyFn) -> PenaltyFn:
        fn = register(fn)
        _NEEDS_GATES[name.lower()] = bool(needs_gates)
        return fn

    return decorator


def penalty_needs_gates(name: str) -> bool:
    """Whether the registered term ``name`` needs channel gates (``True`` if unknown).

    Example:
        >>> penalty_needs_gates("structure"), penalty_needs_gates("dpp_entropy")
        (True, False)
    """
    return _NEEDS_GATES.get(name.lower(), True)


@register_penalty("structure")
def structure_term(
    ctx: PenaltyContext, kind: CostKind = "flops", target: float = 0.0
) -> torch.Tensor:
    """:func:`structure_loss` of the model's relaxed ``kind`` ratio."""
    return structure_loss(ctx.cost_ratio(kind), target)


@register_penalty("l1")
def l1_term(ctx: PenaltyContext, normalize: bool = True) -> torch.Tensor:
    """:func:`gate_l1` of the model's gates."""
    return gate_l1(ctx.probabilities(), normalize=normalize)


@register_penalty("basis")
def basis_term(ctx: PenaltyContext) -> torch.Tensor:
    """:func:`basis_penalty` of the model's gate logits."""
    return basis_penalty(ctx.logits())


@register_penalty("fence")
def fence_term(ctx: PenaltyContext) -> torch.Tensor:
    """:func:`fence_penalty` of the model's gates' decision logits."""
    return fence_penalty(ctx.decision_logits())


@register_penalty("dpp_entropy", needs_gates=False)
def dpp_entropy_term(ctx: PenaltyContext) -> torch.Tensor:
    """DPP's entropy regulariser: mean entropy of ``softmax(phi)`` over all DPP rows.

    Covers every :class:`~lightning_prune.gates.GumbelTopKGate` and every kernel/weight DPP mask
    (:func:`lightning_prune.dpp.dpp_entropy_penalty`); weight it with lambda 1e-5 .. 5e-3 as in
    the paper. Needs no channel gates.

    Raises:
        ValueError: when the model has neither (the message names the fix).
    """
    return dpp_entropy_penalty(ctx.model)


GATELESS_FIX = (
    "Insert channel gates (gate: sigmoid / hard_concrete / gumbel_topk on PrunableMixin or "
    "ClassificationModule, or the RelaxedPruning callback), or, for kernel/weight DPP alone "
    "(gate: none), keep only terms that need no gates: {names}."
)


def _gateless_names() -> str:
    return ", ".join(n for n in PENALTIES.names() if not penalty_needs_gates(n)) or "none"
