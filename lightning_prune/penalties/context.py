"""What penalty terms read: :class:`PenaltyContext`, the model and the training progress.

The gate probabilities and relaxed cost ratios are computed once per step and shared between
the terms of :mod:`lightning_prune.penalties.registry`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.gates import ChannelGate
from lightning_prune.penalties.functions import gate_logits

__all__ = ["CostKind", "PenaltyContext"]

CostKind = Literal["flops", "params"]


class PenaltyContext:
    """What penalty terms read, computed lazily and once per step.

    Args:
        model: the augmented model (gates found with ``lp.get_gates``).
        progress: fraction of training done, in ``[0, 1]`` (for ramps).

    Example:
        >>> ctx = PenaltyContext(torch.nn.Linear(2, 2), progress=0.5)
        >>> ctx.progress
        0.5
    """

    def __init__(self, model: nn.Module, progress: float = 1.0) -> None:
        self.model = model
        self.progress = float(progress)
        self._gates: list[ChannelGate] | None = None
        self._probabilities: list[torch.Tensor] | None = None
        self._ratios: dict[str, torch.Tensor] = {}

    @property
    def gates(self) -> list[ChannelGate]:
        """The model's gates (raises if it has none)."""
        if self._gates is None:
            gates = list(lp.get_gates(self.model))
            if not gates:
                raise lp.NotAugmentedError(
                    f"The sparsity penalty needs gates, but {type(self.model).__name__} has none. "
                    "Call lightning_prune.augment(model, example_inputs) first (Lightning: use "
                    "PrunableMixin or the RelaxedPruning callback)."
                )
            self._gates = gates
        return self._gates

    def probabilities(self) -> list[torch.Tensor]:
        """Differentiable keep-probabilities, one tensor per gate."""
        if self._probabilities is None:
            self._probabilities = [g.probabilities() for g in self.gates]
        return self._probabilities

    def logits(self) -> list[torch.Tensor]:
        """Gate pre-activations (see :func:`gate_logits`)."""
        return [gate_logits(g) for g in self.gates]

    def values(self) -> list[torch.Tensor]:
        """The values the gates apply now, one tensor per gate.

        Training: the relaxed values (for stochastic gates the sample the forward pass used);
        eval: the hard masks. They are the gates' untracked values
        (:meth:`~lightning_prune.gates.ChannelGate.penalty_values`): a penalty's gradient is
        never read as the task's pull on a unit.
        """
        return [g.penalty_values() for g in self.gates]

    def decision_logits(self) -> list[torch.Tensor]:
        """Each gate's signed distance from its threshold, in logit units (differentiable)."""
        return [g.decision_logits() for g in self.gates]

    def cost_ratio(self, kind: CostKind = "flops") -> torch.Tensor:
        """Differentiable ``relaxed_cost / dense_cost`` of ``kind``."""
        if kind not in self._ratios:
            relaxed = lp.relaxed_cost(self.model, kind=kind)
            self._ratios[kind] = relaxed / float(lp.dense_cost(self.model, kind=kind))
        return self._ratios[kind]
