"""Dynamic Probabilistic Pruning (Gonzalez-Carabarin et al. 2021) at kernel and weight granularity.

Feature-map granularity is the ``"gumbel_topk"`` channel gate
(:class:`lightning_prune.gates.gumbel_topk.GumbelTopKGate`, used through ``lp.augment``);
this package adds the granularities that keep dense shapes:

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_prune import dpp
    >>> net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    >>> masks = dpp.apply_dpp(net, "weight", k=2, n=4)         # 2:4 on every conv
    >>> report = dpp.kept_macs(net, torch.zeros(1, 8, 8, 8))
    >>> report.kept_ratio
    0.5
    >>> _ = dpp.fold_dpp_masks(net)                              # zeros baked into the weights
"""

from lightning_prune.dpp.apply import (
    apply_dpp,
    dpp_temperature,
    fold_dpp_masks,
    get_dpp_masks,
    restore_dpp_masks,
    set_dpp_temperature,
)
from lightning_prune.dpp.diagnostics import dpp_entropy_penalty, mask_confidence, mask_diversity
from lightning_prune.dpp.macs import LayerMacs, MacsReport, kept_macs
from lightning_prune.dpp.masks import KernelTopK, TopKMask, WeightTopK
from lightning_prune.dpp.quant import (
    FakeQuantActivation,
    FakeQuantWeight,
    disable_fake_quant,
    enable_fake_quant,
    export_int8,
    fake_quantize,
    has_dpp,
    load_int8,
    quantize_weight,
    strip_dpp,
)
from lightning_prune.dpp.semi_structured import is_2to4, to_semi_structured

__all__ = [
    "FakeQuantActivation",
    "FakeQuantWeight",
    "KernelTopK",
    "LayerMacs",
    "MacsReport",
    "TopKMask",
    "WeightTopK",
    "apply_dpp",
    "disable_fake_quant",
    "dpp_entropy_penalty",
    "dpp_temperature",
    "enable_fake_quant",
    "export_int8",
    "fake_quantize",
    "fold_dpp_masks",
    "get_dpp_masks",
    "has_dpp",
    "is_2to4",
    "kept_macs",
    "load_int8",
    "mask_confidence",
    "mask_diversity",
    "quantize_weight",
    "restore_dpp_masks",
    "set_dpp_temperature",
    "strip_dpp",
    "to_semi_structured",
]
