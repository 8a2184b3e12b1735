"""Kernel- and weight-granularity DPP masks, applied as weight parametrizations.

Both masks keep the layer's dense shape: they multiply its weight by a 0/1 mask with exactly
``k`` ones per row of candidates. They are ``torch.nn.utils.parametrize`` parametrizations
(:func:`lightning_prune.dpp.apply_dpp` registers them), chosen over forward-pre-hooks because

* ``model.state_dict()`` / ``load_state_dict`` keep working (keys
  ``<layer>.parametrizations.weight.original`` and ``<layer>.parametrizations.weight.0.logits``),
  so Lightning checkpoints save and resume a DPP model as is;
* ``model.train()`` / ``model.eval()`` reach the mask (it is a submodule of the layer), and
  ``parametrize.remove_parametrizations`` gives the fold for free.

A parametrized model can be deep-copied but not pickled whole (``torch.save(model)``); save its
``state_dict`` (or fold first with :func:`lightning_prune.dpp.fold_dpp_masks`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_prune.gates.gumbel_topk import gumbel_topk_mask, resolve_k, row_entropy, topk_mask

__all__ = ["KernelTopK", "TopKMask", "WeightTopK"]


class TopKMask(nn.Module):
    """Base class: trainable logits ``[rows, n]``, exactly ``k`` of ``n`` kept per row.

    In training each call samples a fresh Gumbel top-k mask (straight-through gradient to the
    logits); in eval the deterministic top-k of the logits is applied. Subclasses define how the
    ``[rows, n]`` candidates map onto the weight (:meth:`candidates`, :meth:`expand`).

    Args:
        weight_shape: shape of the weight this mask applies to.
        rows: number of rows of candidates.
        n: candidates per row.
        k: candidates kept per row.
        temperature: initial ``tau`` of the soft relaxation (annealed 5 -> 0.5).
        noise_scale: Gumbel noise scale ``c``.
    """

    default_temperature_range: tuple[float, float] = (5.0, 0.5)
    #: ``TemperatureAnnealing`` without a schedule anneals DPP masks linearly (the paper's).
    default_temperature_schedule: str = "linear"
    num_kept: torch.Tensor
    temperature: torch.Tensor

    def __init__(
        self,
        weight_shape: tuple[int, ...] | torch.Size,
        rows: int,
        n: int,
        k: int,
        temperature: float = 5.0,
        noise_scale: float = 0.05,
    ) -> None:
        super().__init__()
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}.")
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self.n = int(n)
        self.noise_scale = float(noise_scale)
        #: Path of the layer this mask belongs to (set by ``apply_dpp``; used in reports).
        self.layer_name = ""
        self.register_buffer("num_kept", torch.tensor(resolve_k(n, k)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.logits = nn.Parameter(torch.zeros(rows, n))

    # ------------------------------------------------------------- mapping
    def candidates(self, weight: torch.Tensor) -> torch.Tensor:
        """Per-candidate magnitude of ``weight`` as ``[rows, n]`` (for magnitude init)."""
        raise NotImplementedError

    def expand(self, rows_mask: torch.Tensor) -> torch.Tensor:
        """Map a ``[rows, n]`` mask to a tensor broadcastable against the weight."""
        raise NotImplementedError

    # ------------------------------------------------------------- state
    @property
    def k(self) -> int:
        """Candidates kept per row."""
        return int(self.num_kept)

    @property
    def kept_fraction(self) -> float:
        """``k / n``: the fraction of the layer's weights this mask keeps."""
        return self.k / self.n

    def row_logits(self) -> torch.Tensor:
        """The trainable logits, ``[rows, n]``."""
        return self.logits

    def sample_rows(self) -> torch.Tensor:
        """A fresh training-mode sample ``[rows, n]`` (0/1 values, straight-through gradient)."""
        return gumbel_topk_mask(
            self.logits, self.k, self.temperature, self.noise_scale, training=True
        )

    def hard_rows(self) -> torch.Tensor:
        """Deterministic boolean top-k of the logits, ``[rows, n]``."""
        with torch.no_grad():
            return topk_mask(self.logits, self.k)

    def weight_mask(self) -> torch.Tensor:
        """The deterministic (eval) mask as a boolean tensor of the weight's shape."""
        return self.expand(self.hard_rows()).expand(self.weight_shape).clone()

    def entropy(self) -> torch.Tensor:
        """Entropy of ``softmax(phi)`` of every row, ``[rows]``."""
        return row_entropy(self.logits)

    # ------------------------------------------------------------- use
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` times a sampled (training) or deterministic (eval) mask."""
        rows = self.sample_rows() if self.training else self.hard_rows()
        return weight * self.expand(rows).to(weight.dtype)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Store an assigned weight (``layer.weight = w``) as the new unmasked weight.

        Raises:
            RuntimeError: if ``w`` has another shape (e.g. ``lp.collapse`` slicing channels):
                fold the masks first with :func:`lightning_prune.dpp.fold_dpp_masks`.
        """
        if tuple(weight.shape) != self.weight_shape:
            raise RuntimeError(
                f"Cannot resize the DPP-masked weight of {self.layer_name or 'this layer'} from "
                f"{self.weight_shape} to {tuple(weight.shape)}: call "
                "lightning_prune.dpp.fold_dpp_masks(model) first (e.g. before lp.collapse)."
            )
        return weight

    def apply_hard(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` times the deterministic mask, whatever the train/eval mode."""
        return weight * self.expand(self.hard_rows()).to(weight.dtype)

    @torch.no_grad()
    def init_from_weight(self, weight: torch.Tensor) -> None:
        """Set the logits to the per-row standardised candidate magnitudes of ``weight``.

        The deterministic top-k then equals magnitude pruning (a warm start for trained models).
        """
        mag = self.candidates(weight.detach()).float()
        std = mag.std(dim=1, keepdim=True, unbiased=False).clamp_min(1e-12)
        self.logits.copy_((mag - mag.mean(dim=1, keepdim=True)) / std)

    def extra_repr(self) -> str:
        """Shape, ``k`` of ``n`` and the relaxation settings."""
        return (
            f"weight_shape={self.weight_shape}, rows={self.logits.shape[0]}, k={self.k}, "
            f"n={self.n}, temperature={float(self.temperature):.3g}, "
            f"noise_scale={self.noise_scale}"
        )


def _split_shape(weight_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, tuple[int, ...]]:
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) < 2:
        raise ValueError(f"DPP masks need a conv/linear weight (>= 2 dims), got shape {shape}.")
    return shape[0], shape[1], shape[2:]


class KernelTopK(TopKMask):
    """Kernel granularity: ``k`` of the ``C_in`` input kernels kept per output feature map.

    For a conv weight ``[C_out, C_in, kh, kw]`` each row holds the ``C_in`` kernels
    (``kh x kw`` slices) feeding one output channel; with ``tile`` the input channels are split
    into tiles of ``tile`` consecutive channels and ``k`` kernels are kept per tile (a uniform
    load per processing element). On a linear weight a kernel is a single weight.

    Args:
        weight_shape: ``[C_out, C_in / groups, *kernel_size]``.
        k: kernels kept per row (give ``k`` or ``keep_ratio``).
        keep_ratio: fraction of each row's kernels kept (rounded, at least one).
        tile: input channels per row (must divide ``C_in / groups``); ``None`` = all of them.
        temperature: initial ``tau``.
        noise_scale: Gumbel noise scale ``c``.

    Example:
        >>> mask = KernelTopK((8, 4, 3, 3), k=2).eval()
        >>> mask.weight_mask()[:, :, 0, 0].sum(dim=1).tolist()
        [2, 2, 2, 2, 2, 2, 2, 2]
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...] | torch.Size,
        k: int | None = None,
        keep_ratio: float | None = None,
        tile: int | None = None,
        temperature: float = 5.0,
        noise_scale: float = 0.05,
    ) -> None:
        c_out, c_in, spatial = _split_shape(weight_shape)
        tile = c_in if tile is None else int(tile)
        if tile < 1 or c_in % tile:
            raise ValueError(
                f"tile={tile} must divide the {c_in} input channels of weight "
                f"{tuple(weight_shape)}."
            )
        if k is None and keep_ratio is None:
            raise ValueError("KernelTopK needs k or keep_ratio (kernels kept per row).")
        super().__init__(
            weight_shape,
            rows=c_out * (c_in // tile),
            n=tile,
            k=resolve_k(tile, k, keep_ratio),
            temperature=temperature,
            noise_scale=noise_scale,
        )
        self.tile = tile
        self._spatial = spatial

    def candidates(self, weight: torch.Tensor) -> torch.Tensor:
        """L1 norm of every kernel, ``[rows, tile]``."""
        kernels = weight.abs().flatten(2).sum(dim=2) if weight.dim() > 2 else weight.abs()
        return kernels.reshape(-1, self.n)

    def expand(self, rows_mask: torch.Tensor) -> torch.Tensor:
        """``[rows, tile]`` -> ``[C_out, C_in, 1, ..., 1]``."""
        c_out, c_in = self.weight_shape[:2]
        return rows_mask.reshape(c_out, c_in, *([1] * len(self._spatial)))


class WeightTopK(TopKMask):
    """Weight granularity: ``k`` of every ``n`` consecutive weights along the input dimension.

    Groups run along the input-channel axis: for a linear weight ``[out, in]`` each row of
    ``in`` is cut into groups of ``n`` consecutive weights (``k=2, n=4`` is the NVIDIA 2:4
    semi-structured pattern); for a conv weight the groups are taken, at every output channel
    and kernel position, over ``n`` consecutive input channels.

    Args:
        weight_shape: ``[C_out, C_in / groups, *kernel_size]``.
        k: weights kept per group.
        n: group size (must divide ``C_in / groups``).
        temperature: initial ``tau``.
        noise_scale: Gumbel noise scale ``c``.

    Example:
        >>> mask = WeightTopK((3, 8), k=2, n=4).eval()
        >>> mask.weight_mask().reshape(3, 2, 4).sum(dim=-1).tolist()
        [[2, 2], [2, 2], [2, 2]]
    """

    def __init__(
        self,
        weight_shape: tuple[int, ...] | torch.Size,
        k: int = 2,
        n: int = 4,
        temperature: float = 5.0,
        noise_scale: float = 0.05,
    ) -> None:
        c_out, c_in, spatial = _split_shape(weight_shape)
        if n < 1 or c_in % n:
            raise ValueError(
                f"n={n} must divide the {c_in} input channels of weight {tuple(weight_shape)}."
            )
        super().__init__(
            weight_shape,
            rows=c_out * math.prod(spatial) * (c_in // n),
            n=n,
            k=resolve_k(n, k),
            temperature=temperature,
            noise_scale=noise_scale,
        )
        self._spatial = spatial

    def candidates(self, weight: torch.Tensor) -> torch.Tensor:
        """``|w|`` grouped as ``[rows, n]`` (input axis last)."""
        return weight.abs().movedim(1, -1).reshape(-1, self.n)

    def expand(self, rows_mask: torch.Tensor) -> torch.Tensor:
        """``[rows, n]`` -> the weight's shape."""
        c_out, c_in = self.weight_shape[:2]
        return rows_mask.reshape(c_out, *self._spatial, c_in).movedim(-1, 1)
