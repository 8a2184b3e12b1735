"""The paper's relaxed gate ``sigmoid(k * s)`` (Larson et al. 2023; Savarese et al. 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.registry import register_gate


@register_gate("sigmoid")
class SigmoidGate(ChannelGate):
    """Deterministic relaxed gate ``w_c = sigmoid(k * s_c)``.

    ``k`` is the temperature buffer (annealed upwards, e.g. 5 -> 30, so the sigmoid approaches
    a step); ``s`` are the trainable logits, initialised to ``init_logit`` (the authors use 1).

    Args:
        num_channels: number of units.
        temperature: initial slope ``k``.
        threshold: keep-probability threshold for the hard mask.
        init_logit: initial value of every logit ``s_c``.
        straight_through: in training, apply the hard 0/1 mask in the forward pass and the
            sigmoid's gradient in the backward pass (straight-through estimator), so the network
            trains on exactly the structure collapse will keep. Off by default (the paper's
            soft gate); helps when the structure phase is too short for annealing to make the
            gates binary.

    Example:
        >>> gate = SigmoidGate(4, temperature=5.0)
        >>> gate.eval()().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    default_temperature_range = (5.0, 30.0)
    #: Logits start at +1 and are confidently closed below about -0.1 once ``k`` reaches 30.
    decision_span = 2.0

    def __init__(
        self,
        num_channels: int,
        temperature: float = 5.0,
        threshold: float = 0.5,
        init_logit: float = 1.0,
        straight_through: bool = False,
    ) -> None:
        super().__init__(num_channels, temperature=temperature, threshold=threshold)
        self.logits = nn.Parameter(torch.full((num_channels,), float(init_logit)))
        self.straight_through = bool(straight_through)

    def probabilities(self) -> torch.Tensor:
        """``sigmoid(k * s)``."""
        return torch.sigmoid(self.temperature * self.logits)

    def decision_logits(self) -> torch.Tensor:
        """``k * s - logit(threshold)`` (exact, no clamping of the probability)."""
        return self.temperature * self.logits - math.log(self.threshold / (1.0 - self.threshold))

    def _soft_values(self) -> torch.Tensor:
        probs = self.probabilities()
        if not self.straight_through:
            return probs
        hard = self._keep_min(probs.detach() > self.threshold, probs).to(probs.dtype)
        return hard + probs - probs.detach()

    def set_probabilities(self, probs: torch.Tensor) -> None:
        """``s = logit(p) / k``."""
        probs = self._check_probabilities(probs)
        k = max(float(self.temperature), 1e-6)
        with torch.no_grad():
            self.logits.copy_((torch.logit(probs) / k).to(self.logits))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Set logits to ``+a`` (kept) or ``-a`` (closed) with ``a`` clear of the threshold."""
        mask = self._check_mask(mask)
        k = max(float(self.temperature), 1e-6)
        margin = abs(math.log(self.threshold / (1.0 - self.threshold))) / k
        a = max(1.0, 2.0 * margin + 1.0 / k)
        with torch.no_grad():
            self.logits.copy_(torch.where(mask, a, -a).to(self.logits))
