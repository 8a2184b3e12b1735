"""Kept multiply-adds of a DPP model: dense MACs times the kept weight fraction per layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from lightning_prune.dpp._select import LAYER_TYPES, raw_weight, weight_chain
from lightning_prune.dpp.masks import TopKMask

__all__ = ["LayerMacs", "MacsReport", "kept_macs"]

MACS_LABEL = (
    "kept multiply-adds of conv/linear layers = dense MACs x kept weight fraction per layer "
    "(a count for sparse hardware, not a measured dense-GPU speed-up)"
)


@dataclass(frozen=True)
class LayerMacs:
    """MACs of one conv/linear layer for the example batch."""

    dense_macs: int
    kept_fraction: float
    kept_macs: float


@dataclass(frozen=True)
class MacsReport:
    """Result of :func:`kept_macs`; ``label`` says what is counted.

    Attributes:
        dense_macs: multiply-adds of all conv/linear layers, unmasked, for the example batch.
        kept_macs: the same with each layer scaled by its kept weight fraction.
        per_layer: :class:`LayerMacs` by layer path.
        label: a description of the numbers (put it next to them in any report).
    """

    dense_macs: int
    kept_macs: float
    per_layer: dict[str, LayerMacs] = field(default_factory=dict)
    label: str = MACS_LABEL

    @property
    def kept_ratio(self) -> float:
        """``kept_macs / dense_macs``."""
        return self.kept_macs / self.dense_macs if self.dense_macs else 1.0

    def as_dict(self) -> dict:
        """JSON-serialisable form."""
        out = asdict(self)
        out["kept_ratio"] = self.kept_ratio
        return out


def _kept_fraction(module: nn.Module) -> float:
    masks = [p for p in weight_chain(module) if isinstance(p, TopKMask)]
    with torch.no_grad():
        if masks:
            keep = torch.ones(
                masks[0].weight_shape, dtype=torch.bool, device=masks[0].logits.device
            )
            for m in masks:
                keep &= m.weight_mask()
            return float(keep.float().mean())
        return float((raw_weight(module) != 0).float().mean())


def kept_macs(
    model: nn.Module, example_inputs: torch.Tensor | tuple[torch.Tensor, ...]
) -> MacsReport:
    """Count dense and kept multiply-adds of every conv/linear layer for ``example_inputs``.

    A layer's dense MACs are ``output elements x (C_in / groups) x prod(kernel)`` (bias adds not
    counted), summed over all its calls in one eval forward of the example batch. Its kept
    fraction is the deterministic DPP mask's keep fraction (``k / n``) when it has one, else the
    fraction of non-zero weights (so a folded model reports the same numbers).

    Args:
        model: the model (run once in eval mode, under ``no_grad``; its mode is restored).
        example_inputs: a batch, as a tensor or a tuple of positional tensors.

    Returns:
        A :class:`MacsReport`.

    Example:
        >>> conv = nn.Conv2d(4, 8, 3, padding=1)
        >>> kept_macs(conv, torch.zeros(1, 4, 6, 6)).dense_macs
        10368
    """
    dense: dict[str, int] = {}
    names = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES) and ".parametrizations." not in f".{name}.":
            names[module] = name

            def hook(mod: nn.Module, _args: tuple, output: torch.Tensor) -> None:
                w = raw_weight(mod)
                key = names[mod]
                dense[key] = dense.get(key, 0) + output.numel() * (w.numel() // w.shape[0])

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    modules = {v: k for k, v in names.items()}
    per_layer = {}
    for key, macs in dense.items():
        frac = _kept_fraction(modules[key])
        per_layer[key] = LayerMacs(dense_macs=macs, kept_fraction=frac, kept_macs=macs * frac)
    return MacsReport(
        dense_macs=sum(v.dense_macs for v in per_layer.values()),
        kept_macs=sum(v.kept_macs for v in per_layer.values()),
        per_layer=per_layer,
    )
