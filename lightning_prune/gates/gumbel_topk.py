"""Gumbel top-k masks of Dynamic Probabilistic Pruning (DPP, Gonzalez-Carabarin et al. 2021).

A functional core that works on any ``[rows, n]`` logits, and :class:`GumbelTopKGate`, the
feature-map granularity of DPP as a :class:`~lightning_prune.gates.base.ChannelGate`.

Forward (hard): each row keeps exactly ``k`` of its ``n`` candidates, the top-k of
``phi + c * g`` with fresh Gumbel noise ``g = -log(-log(u))`` in training and the deterministic
top-k of ``phi`` in eval. Backward (soft, straight-through): ``k`` sequential softmax draws
without replacement, ``soft_j = softmax((log(exp(phi) * (1 - mask_<j)) + c * g) / tau)``, summed
over ``j``; the output is ``hard + (soft - soft.detach())`` (exactly 0/1 forward, the soft
gradient backward). ``mask_<j`` marks the ``j - 1`` candidates drawn before draw ``j``; they are
the first entries of the perturbed top-k (top-k of Gumbel-perturbed logits *is* sequential
sampling without replacement), and the soft draws use the same perturbation ``c * g`` as the
hard forward, so the soft sum tends to the hard mask as ``tau -> 0``.

The ``k`` draws are computed in closed form, not in a loop: with the candidates sorted by
perturbed key, draw ``j`` normalises over the keys of sorted positions ``>= j``, so
``soft_i = exp(key_i / tau) * sum_{j <= min(rank_i, k)} 1 / Z_j`` with
``log Z_j`` a reversed ``logcumsumexp``. Cost ``O(n log n)`` per row whatever ``k`` is;
:func:`sequential_softmax_reference` is the literal loop, kept for tests.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.registry import register_gate

__all__ = [
    "GumbelTopKGate",
    "gumbel_noise",
    "gumbel_topk_mask",
    "resolve_k",
    "row_entropy",
    "sequential_softmax_reference",
    "sequential_softmax_relaxation",
    "topk_mask",
]

_EPS = 1e-10


def resolve_k(n: int, k: int | None = None, keep_ratio: float | None = None) -> int:
    """Number of candidates to keep out of ``n`` from ``k`` or ``keep_ratio`` (at most one).

    ``keep_ratio`` rounds to the nearest integer and keeps at least one candidate; with neither
    given every candidate is kept.

    Example:
        >>> resolve_k(10, keep_ratio=0.25)
        2
    """
    if k is not None and keep_ratio is not None:
        raise ValueError(
            f"Give either k or keep_ratio, not both (got k={k}, keep_ratio={keep_ratio})."
        )
    if keep_ratio is not None:
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}.")
        return max(1, min(n, round(keep_ratio * n)))
    if k is None:
        return n
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, {n}] (the number of candidates per row), got {k}.")
    return k


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard Gumbel samples ``-log(-log(u))``, ``u ~ U(0, 1)``."""
    u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    u = u.clamp(_EPS, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of each row (last dimension) of ``scores``.

    Example:
        >>> topk_mask(torch.tensor([[0.1, 0.9, 0.5]]), 2).tolist()
        [[False, True, True]]
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(scores, k, dim=-1, sorted=False).indices
        mask.scatter_(-1, idx, True)
    return mask


def sequential_softmax_relaxation(
    keys: torch.Tensor, k: int, tau: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft and hard masks of ``k`` sequential softmax draws without replacement.

    Args:
        keys: perturbed logits ``phi + c * g``, shape ``[..., n]``.
        k: draws per row, ``0 <= k <= n``.
        tau: softmax temperature.

    Returns:
        ``(soft, hard)``: ``soft`` is ``sum_j softmax(keys masked by the earlier draws / tau)``
        (differentiable, each row sums to ``k``); ``hard`` is the float 0/1 top-k of ``keys``.
    """
    n = keys.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, {n}], got {k}.")
    if k == 0:
        zeros = torch.zeros_like(keys)
        return zeros + 0.0 * keys, zeros
    scaled = keys / tau
    sorted_keys, order = torch.sort(scaled, dim=-1, descending=True)
    # log Z_j = logsumexp of the keys still available at draw j (sorted positions >= j).
    log_z = torch.logcumsumexp(sorted_keys.flip(-1), dim=-1).flip(-1)[..., :k]
    # log sum_{j <= r} 1 / Z_j for r = 0 .. k-1.
    log_inv_cum = torch.logcumsumexp(-log_z, dim=-1)
    pos = torch.arange(n, device=keys.device).clamp(max=k - 1)
    soft_sorted = torch.exp(sorted_keys + log_inv_cum[..., pos])
    soft = torch.empty_like(soft_sorted).scatter(-1, order, soft_sorted)
    hard = torch.zeros_like(soft_sorted).scatter(-1, order[..., :k], 1.0)
    return soft, hard


def sequential_softmax_reference(keys: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """The literal loop ``sum_j softmax((log(exp(phi) * (1 - mask_<j)) + c * g) / tau)``.

    Slow (``k`` softmaxes); the test oracle for :func:`sequential_softmax_relaxation`.
    """
    taken = torch.zeros_like(keys, dtype=torch.bool)
    soft = torch.zeros_like(keys)
    for _ in range(k):
        masked = keys.masked_fill(taken, float("-inf"))
        soft = soft + torch.softmax(masked / tau, dim=-1)
        taken = taken.scatter(-1, masked.argmax(dim=-1, keepdim=True), True)
    return soft


def gumbel_topk_mask(
    logits: torch.Tensor,
    k: int,
    tau: float | torch.Tensor = 1.0,
    noise_scale: float = 0.05,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DPP mask keeping exactly ``k`` entries of each row of ``logits`` (``[rows, n]``).

    Args:
        logits: trainable logits ``phi``, shape ``[..., n]``.
        k: entries kept per row.
        tau: temperature of the soft (backward) relaxation.
        noise_scale: scale ``c`` of the Gumbel perturbation in training.
        training: sample (fresh noise each call, straight-through gradient) or return the
            deterministic top-k of ``logits`` (no gradient).
        generator: optional random generator for the noise.

    Returns:
        Float mask of ``logits``' shape, exactly 0/1 in value; in training its gradient is the
        one of the sequential-softmax relaxation.

    Example:
        >>> phi = torch.zeros(3, 4, requires_grad=True)
        >>> m = gumbel_topk_mask(phi, k=2, tau=1.0)
        >>> m.sum(dim=1).tolist()
        [2.0, 2.0, 2.0]
    """
    if not training:
        return topk_mask(logits.detach(), k).to(logits.dtype)
    noise = gumbel_noise(
        logits.shape, device=logits.device, dtype=logits.dtype, generator=generator
    )
    soft, hard = sequential_softmax_relaxation(logits + noise_scale * noise, k, tau)
    return hard + (soft - soft.detach())  # exactly 0/1 in value (x - x == 0 in floating point)


def row_entropy(logits: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` along the last dimension (one value per row).

    With ``normalized=True`` it is divided by ``log(n)`` (1 = uniform, 0 = one-hot).
    """
    log_p = torch.log_softmax(logits, dim=-1)
    ent = -(log_p.exp() * log_p).sum(dim=-1)
    if normalized:
        n = logits.shape[-1]
        ent = ent / math.log(n) if n > 1 else torch.zeros_like(ent)
    return ent


@register_gate("gumbel_topk")
class GumbelTopKGate(ChannelGate):
    """DPP feature-map gate: exactly ``k`` of ``num_channels`` channels kept.

    Training samples the top-k of ``phi + c * g`` once per model forward (fresh Gumbel noise;
    the surgery engine calls :meth:`reset_sample` before each forward) with the sequential-softmax
    straight-through gradient; eval applies the deterministic top-k of ``phi``. Sparsity is fixed
    by ``k``: no sparsity penalty is needed, only the optional entropy regulariser
    (:meth:`entropy`, :func:`lightning_prune.dpp.dpp_entropy_penalty`). The temperature ``tau``
    is annealed *down*, 5 -> 0.5.

    Args:
        num_channels: number of channels in the group.
        k: channels kept. Give ``k`` or ``keep_ratio``; with neither, every channel is kept
            (the gate is then an identity until :meth:`set_mask` or a smaller ``k`` is set).
        keep_ratio: fraction of channels kept (rounded, at least one).
        temperature: initial ``tau`` of the soft relaxation.
        noise_scale: Gumbel noise scale ``c`` (the paper uses 0.01 - 0.1).
        threshold: unused by the top-k hard mask; kept for the gate contract.
        init_logit: initial value of every logit (equal logits = uniform sampling).

    Example:
        >>> gate = GumbelTopKGate(8, k=3)
        >>> int(gate.train()().sum()), int(gate.hard_mask().sum())
        (3, 3)
    """

    stochastic = True
    default_temperature_range = (5.0, 0.5)
    #: The paper anneals ``tau`` linearly (read by ``TemperatureAnnealing`` without a schedule).
    default_temperature_schedule = "linear"
    #: Logits start equal; a few units apart separates the top-k from the rest.
    decision_span = 4.0
    num_kept: torch.Tensor
    temperature: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        k: int | None = None,
        keep_ratio: float | None = None,
        temperature: float = 5.0,
        noise_scale: float = 0.05,
        threshold: float = 0.5,
        init_logit: float = 0.0,
    ) -> None:
        super().__init__(num_channels, temperature=temperature, threshold=threshold)
        if k is not None and int(k) == 0:
            raise ValueError(
                "GumbelTopKGate needs k >= 1: with k=0 every channel of the group is closed for "
                "good. Give k between 1 and num_channels (or keep_ratio); to close a "
                "non-critical group on purpose, call set_mask with an all-False mask."
            )
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}.")
        self.noise_scale = float(noise_scale)
        self.register_buffer("num_kept", torch.tensor(resolve_k(num_channels, k, keep_ratio)))
        self.logits = nn.Parameter(torch.full((num_channels,), float(init_logit)))

    @property
    def k(self) -> int:
        """Number of channels kept, never fewer than :attr:`min_kept`.

        Stored in the ``num_kept`` buffer (checkpoints carry it); a critical group keeps at
        least one unit whatever ``k`` asks for, so it always leaves a path from input to output.
        """
        return max(int(self.num_kept), min(self.min_kept, self.num_channels))

    @k.setter
    def k(self, value: int) -> None:
        self.num_kept.fill_(resolve_k(self.num_channels, int(value)))

    def probabilities(self) -> torch.Tensor:
        """Differentiable keep-probability proxy ``clamp(k * softmax(phi), 0, 1)``."""
        return (self.k * torch.softmax(self.logits, dim=0)).clamp(0.0, 1.0)

    def _soft_values(self) -> torch.Tensor:
        return gumbel_topk_mask(
            self.logits[None], self.k, self.temperature, self.noise_scale, training=True
        )[0]

    def hard_mask(self) -> torch.Tensor:
        """Deterministic top-k of the logits: exactly ``k`` entries are ``True``."""
        with torch.no_grad():
            return topk_mask(self.logits[None], self.k)[0]

    def row_logits(self) -> torch.Tensor:
        """The logits as one row, ``[1, num_channels]`` (shared interface with DPP masks)."""
        return self.logits[None]

    def sample_rows(self) -> torch.Tensor:
        """A fresh training-mode sample as one row ``[1, num_channels]`` (no caching)."""
        return self._soft_values()[None]

    def entropy(self) -> torch.Tensor:
        """Entropy of ``softmax(phi)``, one value per row (shape ``[1]``)."""
        return row_entropy(self.row_logits())

    def set_mask(self, mask: torch.Tensor) -> None:
        """Set the logits so the deterministic top-k equals ``mask``, and ``k = mask.sum()``.

        Kept channels get logit ``+a``, closed ones ``-a``, with ``a`` large enough that
        :meth:`probabilities` is at least 0.99 on kept channels and at most 0.01 on closed ones.
        """
        mask = self._check_mask(mask)
        m = int(mask.sum())
        n = self.num_channels
        a = 1.0
        if 0 < m < n:
            a = max(a, 0.5 * math.log(max(100.0 * (n - m) / m, 101.0)))
        with torch.no_grad():
            self.logits.copy_(torch.where(mask, a, -a).to(self.logits))
        self.k = m

    def extra_repr(self) -> str:
        """The base gate fields plus ``k`` and the noise scale."""
        return f"{super().extra_repr()}, k={self.k}, noise_scale={self.noise_scale}"
