"""The gate contract shared by every gate family."""

from __future__ import annotations

import math

import torch
from torch import nn


class ChannelGate(nn.Module):
    """A learnable keep-gate over the ``num_channels`` units of one channel group.

    A gate is *shared* by every layer of its group (a residual stream, a concat input, a
    depthwise chain): calling it returns one value per unit, which the surgery engine multiplies
    into each producer's (normalised) output. Training mode returns the relaxed (soft or sampled)
    values; eval mode returns the hard 0/1 mask, so an augmented model in eval mode computes
    exactly what its collapsed version computes.

    Subclasses implement :meth:`probabilities`, :meth:`_soft_values` and :meth:`set_mask`.

    Args:
        num_channels: number of independent units in the group.
        temperature: initial temperature (slope ``k`` for sigmoid gates, ``tau`` for
            Gumbel gates, ``beta`` for hard-concrete gates). Stored in a buffer so checkpoints
            carry it; :class:`~lightning_prune.callbacks.TemperatureAnnealing` updates it.
        threshold: keep-probability above which a unit is kept by :meth:`hard_mask`.

    Attributes:
        min_kept: units :meth:`hard_mask` and :meth:`set_mask` always keep (the most probable
            ones). :func:`~lightning_prune.augment` sets it to 1 on the gates of *critical*
            groups, those whose closure would cut every path from the input to an output (a
            stage's residual stream, a plain chain's layer), so a network is never pruned into
            a constant; 0 elsewhere (a closed residual branch is removed instead).
    """

    #: Whether training-mode values are random (sampled once per forward of the model).
    stochastic: bool = False
    #: The default annealing direction and range, used when no schedule is configured.
    default_temperature_range: tuple[float, float] = (1.0, 1.0)
    #: How far (in units of the gate's trainable parameter) a unit travels from its initial
    #: value to a confidently closed state. :class:`~lightning_prune.PruningSchedule` derives the
    #: gates' learning rate from it, so every family can decide within the structure phase.
    decision_span: float = 2.0
    #: Scalar buffer registered in ``__init__`` (declared for type checkers).
    temperature: torch.Tensor

    def __init__(self, num_channels: int, temperature: float = 1.0, threshold: float = 0.5) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"A gate needs at least one channel, got num_channels={num_channels}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}.")
        self.num_channels = int(num_channels)
        self.threshold = float(threshold)
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.min_kept = 0
        self.frozen = False
        #: When set, training-mode forwards accumulate ``d loss / d values`` in
        #: :attr:`value_grad` (the task's pull on each unit, read by the Lightning layer).
        self.track_value_grads = False
        self.value_grad: torch.Tensor | None = None
        self._cached: torch.Tensor | None = None  # the forward's sample (tracked)
        self._sample: torch.Tensor | None = None  # the same sample, untracked (penalties)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cached"] = None  # a sample inside the autograd graph: never copied or pickled
        state["_sample"] = None
        state["value_grad"] = None
        return state

    # ----------------------------------------------------------------- contract
    def probabilities(self) -> torch.Tensor:
        """Differentiable keep-probability of each unit, shape ``[num_channels]``."""
        raise NotImplementedError

    def _soft_values(self) -> torch.Tensor:
        """Values applied in training mode (defaults to :meth:`probabilities`)."""
        return self.probabilities()

    def set_mask(self, mask: torch.Tensor) -> None:
        """Force the gate into the state whose :meth:`hard_mask` equals ``mask``.

        A mask that keeps fewer than :attr:`min_kept` units gets the most probable ones opened.
        """
        raise NotImplementedError

    def set_probabilities(self, probs: torch.Tensor) -> None:
        """Set the parameters so that :meth:`probabilities` returns ``probs``.

        Used to seed the gates from an importance ranking (:func:`lightning_prune.init_gates`).

        Raises:
            NotImplementedError: for families whose probabilities are not per-unit free
                parameters (e.g. a k-out-of-n gate, whose probabilities sum to ``k``).
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot be seeded with per-unit probabilities; use a "
            "sigmoid or hard_concrete gate for importance initialisation."
        )

    def _check_probabilities(self, probs: torch.Tensor) -> torch.Tensor:
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.shape != (self.num_channels,):
            raise ValueError(
                f"set_probabilities expects shape ({self.num_channels},), got {tuple(probs.shape)}."
            )
        if bool(((probs <= 0) | (probs >= 1)).any()):
            raise ValueError("set_probabilities expects values strictly between 0 and 1.")
        return probs

    # ------------------------------------------------------------------ shared
    def hard_mask(self) -> torch.Tensor:
        """Boolean keep-mask, shape ``[num_channels]``."""
        with torch.no_grad():
            probs = self.probabilities()
            return self._keep_min(probs > self.threshold, probs)

    def _keep_min(self, mask: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``mask`` with its ``min_kept`` highest-scoring units opened if fewer are kept."""
        need = min(self.min_kept, self.num_channels)
        if need <= 0 or int(mask.sum()) >= need:
            return mask
        mask = mask.clone()
        mask[torch.topk(scores.detach().float(), need).indices] = True
        return mask

    def reference_temperature(self) -> float:
        """The temperature at which :meth:`keep_within_reach` measures distances.

        The family's starting temperature (or the current one, if lower), so that annealing
        past it can still make the gates binary.
        """
        return min(float(self.temperature), float(self.default_temperature_range[0]))

    @torch.no_grad()
    def keep_within_reach(self, limit: float) -> None:
        """Clamp the parameters so no unit's decision logit exceeds ``limit`` in magnitude.

        The structure phase calls it after every gate step (with a multiple of
        :attr:`decision_span`): a gate driven deep into saturation has a vanishing gradient and
        could not be flipped within the phase any more. The default does nothing (families
        whose parameters do not saturate).
        """

    def decision_logits(self) -> torch.Tensor:
        """Signed distance of each unit from the keep threshold, in logit units (differentiable).

        ``logit(p) - logit(threshold)``: positive for kept units. The fence-sitter penalty pushes
        it away from 0.
        """
        p = self.probabilities().clamp(1e-6, 1 - 1e-6)
        return torch.logit(p) - math.log(self.threshold / (1.0 - self.threshold))

    def decided(self, tolerance: float = 0.05) -> torch.Tensor:
        """Which units the gate decided on its own (boolean, shape ``[num_channels]``).

        Decided means a keep-probability within ``tolerance`` of 0 or 1. A unit that is not
        decided when the structure is fixed gets its keep/drop state from the threshold (or the
        budget snap), not from training: the share of such units measures how much of the
        pruning the relaxation really did.
        """
        with torch.no_grad():
            probs = self.probabilities()
            return (probs <= tolerance) | (probs >= 1.0 - tolerance)

    def freeze(self) -> None:
        """Fix the gate at its hard mask: training-mode calls return it too, with no gradient.

        What the structure phase hands to the final phase: the network then trains on exactly
        the structure collapse will keep. :meth:`set_mask` still changes the frozen mask.
        """
        self.frozen = True
        for param in self.parameters():
            param.requires_grad_(False)

    def reset_sample(self) -> None:
        """Forget the cached sample; the surgery engine calls this before each model forward."""
        self._cached = None
        self._sample = None

    def forward(self) -> torch.Tensor:
        """Per-unit multiplier: relaxed values in training mode, the hard mask in eval mode."""
        if self.frozen or not self.training:
            return self.hard_mask().to(self.temperature.dtype)
        if not self.stochastic:
            return self._tracked(self._soft_values())
        if self._cached is None:
            self._sample = self._soft_values()
            self._cached = self._tracked(self._sample)
        return self._cached

    def penalty_values(self) -> torch.Tensor:
        """The values the forward pass applies (the same sample), for a penalty to act on.

        Unlike :meth:`forward` they are not tracked: the penalty's own gradient must not count
        as the task's pull on a unit (:attr:`value_grad`), or a unit the budget pushes closed
        would look ever less important and the first ranking, noisy on a fresh network, would
        lock in.
        """
        if self.frozen or not self.training:
            return self.hard_mask().to(self.temperature.dtype)
        if not self.stochastic:
            return self._soft_values()
        if self._sample is None:
            self()
        assert self._sample is not None
        return self._sample

    def _tracked(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` as a new autograd node whose gradient (the task's only) is accumulated."""
        if self.track_value_grads and values.requires_grad:
            values = values.view_as(values)
            values.register_hook(self._accumulate_value_grad)
        return values

    def _accumulate_value_grad(self, grad: torch.Tensor) -> None:
        grad = grad.detach().float()
        self.value_grad = grad if self.value_grad is None else self.value_grad + grad

    def pop_value_grad(self) -> torch.Tensor | None:
        """The accumulated ``d loss / d values`` since the last call (then cleared)."""
        grad, self.value_grad = self.value_grad, None
        return grad

    def _check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` validated, with at least ``min_kept`` units (the most probable) kept."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.temperature.device)
        if mask.shape != (self.num_channels,):
            raise ValueError(
                f"set_mask expects a boolean tensor of shape ({self.num_channels},), "
                f"got {tuple(mask.shape)}."
            )
        if int(mask.sum()) >= min(self.min_kept, self.num_channels):
            return mask  # the common case: no probabilities needed
        with torch.no_grad():
            return self._keep_min(mask, self.probabilities())

    def extra_repr(self) -> str:
        return (
            f"num_channels={self.num_channels}, temperature={float(self.temperature):.3g}, "
            f"threshold={self.threshold}"
            + (f", min_kept={self.min_kept}" if self.min_kept else "")
            + (", frozen" if self.frozen else "")
        )
