"""Hard-concrete (L0) gates, Louizos, Welling and Kingma (2018)."""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import nn

from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.registry import register_gate


@register_gate("hard_concrete")
class HardConcreteGate(ChannelGate):
    """Stochastic L0 gate: a stretched, clipped concrete variable per unit.

    Training samples ``z = clamp(sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma)
    + gamma, 0, 1)`` once per model forward; :meth:`probabilities` is the analytic
    ``P(z != 0)``, which is what the expected-L0 and relaxed-FLOPs penalties use. ``beta`` is the
    temperature buffer.

    Args:
        num_channels: number of units.
        temperature: ``beta`` (2/3 in the paper).
        threshold: keep-probability threshold for the hard mask.
        init_keep: initial keep-probability ``P(z != 0)`` of every unit.
        gamma: lower stretch limit (< 0).
        zeta: upper stretch limit (> 1).
    """

    stochastic = True
    default_temperature_range = (2.0 / 3.0, 2.0 / 3.0)
    #: ``log_alpha`` starts at about 3 and is confidently closed below about -4.5.
    decision_span = 8.0

    def __init__(
        self,
        num_channels: int,
        temperature: float = 2.0 / 3.0,
        threshold: float = 0.5,
        init_keep: float = 0.99,
        gamma: float = -0.1,
        zeta: float = 1.1,
    ) -> None:
        super().__init__(num_channels, temperature=temperature, threshold=threshold)
        if not (gamma < 0.0 and zeta > 1.0):
            raise ValueError(f"hard-concrete needs gamma < 0 < 1 < zeta, got {gamma}, {zeta}.")
        self.gamma, self.zeta = float(gamma), float(zeta)
        init = math.log(init_keep / (1 - init_keep)) + self._shift(temperature)
        self.log_alpha = nn.Parameter(torch.full((num_channels,), init))

    @overload
    def _shift(self, beta: float) -> float: ...
    @overload
    def _shift(self, beta: torch.Tensor) -> torch.Tensor: ...
    def _shift(self, beta: float | torch.Tensor) -> float | torch.Tensor:
        return beta * math.log(-self.gamma / self.zeta)

    def probabilities(self) -> torch.Tensor:
        """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``."""
        return torch.sigmoid(self.log_alpha - self._shift(self.temperature))

    def decision_logits(self) -> torch.Tensor:
        """``log_alpha - beta * log(-gamma / zeta) - logit(threshold)``."""
        shift = self._shift(self.temperature)
        return self.log_alpha - shift - math.log(self.threshold / (1.0 - self.threshold))

    @torch.no_grad()
    def keep_within_reach(self, limit: float) -> None:
        """``|log_alpha - shift - logit(threshold)| <= limit`` at the reference temperature."""
        centre = self._shift(self.reference_temperature()) + math.log(
            self.threshold / (1.0 - self.threshold)
        )
        self.log_alpha.clamp_(centre - limit, centre + limit)

    def penalty_values(self) -> torch.Tensor:
        """The forward's sample plus a gradient path through ``P(z != 0)`` (the expected L0).

        A sample clamped at 0 or 1 passes no gradient, so a unit the budget closes would stall
        at a small but non-zero keep-probability (about 0.06 on 20-epoch runs) and be left
        undecided; the probability path keeps it moving. The value is the sample itself.
        """
        values = super().penalty_values()
        if self.frozen or not self.training:
            return values
        probabilities = self.probabilities()
        return values + (probabilities - probabilities.detach())

    def _soft_values(self) -> torch.Tensor:
        u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def set_probabilities(self, probs: torch.Tensor) -> None:
        """``log_alpha = logit(p) + beta * log(-gamma / zeta)``."""
        probs = self._check_probabilities(probs)
        shift = float(self._shift(float(self.temperature)))
        with torch.no_grad():
            self.log_alpha.copy_((torch.logit(probs) + shift).to(self.log_alpha))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Set ``log_alpha`` so that kept units have ``P(z != 0) = 0.99`` and closed ones 0.01."""
        mask = self._check_mask(mask)
        logit = math.log(
            max(self.threshold, 1 - self.threshold) / min(self.threshold, 1 - self.threshold)
        )
        a = max(math.log(99.0), 2 * logit)
        shift = float(self._shift(float(self.temperature)))
        with torch.no_grad():
            self.log_alpha.copy_(torch.where(mask, a + shift, -a + shift).to(self.log_alpha))
