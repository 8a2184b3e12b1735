"""Pure penalty functions: tensors in, tensor out, no state.

These are the functional core of :mod:`lightning_prune.penalties`; the registered terms of
:mod:`lightning_prune.penalties.registry` wrap them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["basis_penalty", "fence_penalty", "gate_l1", "gate_logits", "structure_loss"]


def structure_loss(ratio: torch.Tensor, target: float = 0.0) -> torch.Tensor:
    """Paper 1's structure loss (without its weight): ``|ratio - target|``.

    Args:
        ratio: relaxed cost ratio ``A_relaxed / A_dense`` (differentiable).
        target: the ratio aimed at (0 keeps a steady shrink pressure).

    Example:
        >>> structure_loss(torch.tensor(0.25), 0.5).item()
        0.25
    """
    return (ratio - float(target)).abs()


def gate_l1(probabilities: Sequence[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """L1 norm of the gate keep-probabilities (Continuous Sparsification's ``sum(masks)``).

    Args:
        probabilities: one tensor of keep-probabilities per gate.
        normalize: divide by the number of units (a mean in ``[0, 1]``, independent of the
            network's width) instead of returning the plain sum.

    Example:
        >>> gate_l1([torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])]).item()
        0.5
        >>> gate_l1([torch.tensor([1.0, 0.0])], normalize=False).item()
        1.0
    """
    if not probabilities:
        raise ValueError("gate_l1 needs at least one gate's probabilities.")
    flat = torch.cat([p.reshape(-1) for p in probabilities])
    return flat.mean() if normalize else flat.sum()


def basis_penalty(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fence-sitter ejector ``||exp(-(s / 2) ** 2)||_2 / sqrt(N)`` over all gate logits ``s``.

    1 when every logit sits at 0 (gate undecided), tending to 0 as logits move away from 0, so
    gates end near 0 or 1 and thresholding changes little.

    Example:
        >>> basis_penalty([torch.zeros(2), torch.zeros(2)]).item()
        1.0
    """
    if not logits:
        raise ValueError("basis_penalty needs at least one gate's logits.")
    s = torch.cat([t.reshape(-1) for t in logits])
    return torch.exp(-((s / 2.0) ** 2)).norm(p=2) / math.sqrt(s.numel())


def fence_penalty(decision_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fence-sitter ejector on the decision logits: ``mean(exp(-(z / 2) ** 2))``.

    ``z`` is each unit's signed distance from its keep threshold in logit units
    (:meth:`~lightning_prune.gates.ChannelGate.decision_logits`), so the term is centred on the
    threshold for every gate family (:func:`basis_penalty` uses the raw parameters, centred at
    0, which is the threshold only for sigmoid gates). 1 when every unit sits on its threshold,
    towards 0 as units decide. A mean, so its gradient per unit is comparable to that of a cost
    ratio whatever the network's width.

    Example:
        >>> fence_penalty([torch.zeros(3), torch.full((1,), 100.0)]).item()
        0.75
    """
    if not decision_logits:
        raise ValueError("fence_penalty needs at least one gate's decision logits.")
    z = torch.cat([t.reshape(-1) for t in decision_logits])
    return torch.exp(-((z / 2.0) ** 2)).mean()


def gate_logits(gate: nn.Module) -> torch.Tensor:
    """The pre-activation ``s`` of a gate, as used by :func:`basis_penalty`.

    ``logits`` for sigmoid gates (the raw ``s`` of ``sigmoid(k * s)``), ``log_alpha`` for
    hard-concrete gates, otherwise ``logit(probabilities())``.
    """
    for name in ("logits", "log_alpha"):
        value = getattr(gate, name, None)
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value
    probabilities = gate.probabilities()  # type: ignore[operator]
    return torch.logit(probabilities.clamp(1e-6, 1 - 1e-6))
