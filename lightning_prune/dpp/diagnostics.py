"""DPP regulariser and information-theoretic mask diagnostics (pure functions).

Each function takes a model (every kernel/weight DPP mask and every
:class:`~lightning_prune.gates.gumbel_topk.GumbelTopKGate` in it) or an iterable of those
modules.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import torch
from torch import nn

from lightning_prune.dpp.apply import MaskLike, _mask_items
from lightning_prune.gates.gumbel_topk import row_entropy

__all__ = ["dpp_entropy_penalty", "mask_confidence", "mask_diversity"]


def _items(model_or_masks: nn.Module | Iterable[nn.Module]) -> list[tuple[str, MaskLike]]:
    items = _mask_items(model_or_masks)
    if not items:
        raise ValueError(
            "No DPP masks or gumbel_topk gates found: call lightning_prune.dpp.apply_dpp or "
            "lp.augment(..., gate='gumbel_topk') first."
        )
    return items


def dpp_entropy_penalty(model_or_masks: nn.Module | Iterable[nn.Module]) -> torch.Tensor:
    """Mean entropy of ``softmax(phi)`` over all rows of all DPP masks (differentiable).

    Add ``lambda * dpp_entropy_penalty(model)`` to the loss (the paper uses lambda 1e-5 .. 5e-3)
    to make each row's distribution confident; sparsity itself is fixed by ``k``.

    Example:
        >>> from lightning_prune.dpp import apply_dpp
        >>> net = nn.Linear(8, 2)
        >>> _ = apply_dpp(net, "weight", k=2, n=4)
        >>> round(dpp_entropy_penalty(net).item(), 4)  # uniform logits: log(4)
        1.3863
    """
    ents = [row_entropy(m.row_logits()) for _, m in _items(model_or_masks)]
    return torch.cat(ents).mean()


def mask_confidence(model_or_masks: nn.Module | Iterable[nn.Module]) -> dict[str, float]:
    """Per layer: ``1 - normalised entropy`` of ``softmax(phi)``, averaged over rows.

    The entropy ``H`` of a k-of-n row is normalised over ``[log k, log n]``: a uniform row
    (``H = log n``, nothing decided) scores 0, a row whose mass sits evenly on ``k`` candidates
    (``H = log k``, the mask is decided) scores 1; values are clipped to ``[0, 1]``. A layer
    with ``k = n`` scores 1.
    """
    out = {}
    with torch.no_grad():
        for name, m in _items(model_or_masks):
            logits = m.row_logits()
            n, k = logits.shape[-1], m.k
            if k >= n or n < 2:
                out[name] = 1.0
                continue
            span = math.log(n) - math.log(max(k, 1))
            conf = (math.log(n) - row_entropy(logits)) / span
            out[name] = float(conf.clamp(0.0, 1.0).mean())
    return out


def mask_diversity(
    model_or_masks: nn.Module | Iterable[nn.Module], num_samples: int = 8
) -> dict[str, float]:
    """Per layer: mean pairwise Hamming distance between ``num_samples`` sampled masks.

    Normalised by the largest distance two k-of-n masks can have (``2 * min(k, n - k)`` per
    row), so 0 means every sample is the same mask and 1 maximally different samples. Samples
    use the training-mode Gumbel perturbation (no gradient; the module state is unchanged).
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 to compare masks, got {num_samples}.")
    out = {}
    with torch.no_grad():
        for name, m in _items(model_or_masks):
            samples = [m.sample_rows() > 0.5 for _ in range(num_samples)]
            rows, n = samples[0].shape
            max_dist = rows * 2 * min(m.k, n - m.k)
            if max_dist == 0:
                out[name] = 0.0
                continue
            dists = [float((a ^ b).sum()) / max_dist for a, b in itertools.combinations(samples, 2)]
            out[name] = sum(dists) / len(dists)
    return out
