"""Put DPP masks on a model's conv/linear weights, anneal them, fold them away."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from lightning_prune.dpp._select import (
    Patterns,
    raw_weight,
    rebuild_chain,
    select_layers,
    weight_chain,
)
from lightning_prune.dpp.masks import KernelTopK, TopKMask, WeightTopK
from lightning_prune.gates.gumbel_topk import GumbelTopKGate

__all__ = [
    "apply_dpp",
    "dpp_temperature",
    "fold_dpp_masks",
    "get_dpp_masks",
    "restore_dpp_masks",
    "set_dpp_temperature",
]

Granularity = Literal["kernel", "weight"]


#: Modules with Gumbel top-k logits: kernel/weight masks and feature-map gates.
MaskLike = TopKMask | GumbelTopKGate


def _existing_mask(module: nn.Module) -> TopKMask | None:
    for p in weight_chain(module):
        if isinstance(p, TopKMask):
            return p
    return None


def apply_dpp(
    model: nn.Module,
    granularity: Granularity = "weight",
    k: int | None = None,
    n: int = 4,
    keep_ratio: float | None = None,
    tile: int | None = None,
    include: Patterns = None,
    exclude: Patterns = (),
    temperature: float = 5.0,
    noise_scale: float = 0.05,
    init: Literal["uniform", "magnitude"] = "uniform",
) -> list[TopKMask]:
    """Register kernel- or weight-granularity DPP masks on selected conv/linear layers.

    In place; idempotent (a layer that already has a DPP mask keeps it). Layers are selected by
    name patterns (see :func:`~lightning_prune.dpp._select.matches`); layers a mask cannot
    apply to (``n`` or ``tile`` does not divide the input channels, or nothing would be pruned,
    e.g. a depthwise conv at kernel granularity) are skipped with one warning naming them.
    Call it before building the optimizer so the mask logits are trained.

    Args:
        model: the model to mask.
        granularity: ``"kernel"`` (``k`` of ``C_in`` kernels per output feature map, see
            :class:`KernelTopK`) or ``"weight"`` (``k`` of every ``n`` consecutive weights
            along the input dimension, see :class:`WeightTopK`).
        k: kept per row: kernels per output map (or per tile), or weights per group of ``n``
            (default 2 at weight granularity, i.e. the 2:4 pattern).
        n: group size at weight granularity.
        keep_ratio: kernel granularity only: fraction of kernels kept per row, instead of ``k``.
        tile: kernel granularity only: input channels per row (``None``: all).
        include: name patterns of the layers to mask (``None``: all conv/linear layers).
        exclude: name patterns of layers left dense (e.g. ``("conv1", "fc")``).
        temperature: initial ``tau`` (anneal it 5 -> 0.5 with :func:`set_dpp_temperature`).
        noise_scale: Gumbel noise scale ``c``.
        init: ``"uniform"`` (all logits 0, the paper's start) or ``"magnitude"`` (logits from
            the weights' magnitudes, so the initial mask is magnitude pruning).

    Returns:
        The mask modules of the selected layers (new and pre-existing), in module order.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> masks = apply_dpp(net, "weight", k=2, n=4)
        >>> [m.layer_name for m in masks]
        ['0', '2']
    """
    if granularity not in ("kernel", "weight"):
        raise ValueError(f"granularity must be 'kernel' or 'weight', got {granularity!r}.")
    if init not in ("uniform", "magnitude"):
        raise ValueError(f"init must be 'uniform' or 'magnitude', got {init!r}.")
    if granularity == "kernel" and k is None and keep_ratio is None:
        raise ValueError("Kernel granularity needs k or keep_ratio (kernels kept per row).")
    if granularity == "weight" and (keep_ratio is not None or tile is not None):
        raise ValueError(
            "keep_ratio and tile apply to kernel granularity; use k and n for weights."
        )

    masks: list[TopKMask] = []
    skipped: list[str] = []
    for name, module in select_layers(model, include, exclude):
        existing = _existing_mask(module)
        if existing is not None:
            masks.append(existing)
            continue
        weight = raw_weight(module)
        try:
            if granularity == "kernel":
                mask: TopKMask = KernelTopK(
                    weight.shape,
                    k=k,
                    keep_ratio=keep_ratio,
                    tile=tile,
                    temperature=temperature,
                    noise_scale=noise_scale,
                )
            else:
                mask = WeightTopK(
                    weight.shape,
                    k=2 if k is None else k,
                    n=n,
                    temperature=temperature,
                    noise_scale=noise_scale,
                )
        except ValueError as err:
            skipped.append(f"{name} ({err})")
            continue
        if mask.k >= mask.n:
            skipped.append(f"{name} (keeps all {mask.n} candidates per row)")
            continue
        mask = mask.to(weight.device)
        mask.layer_name = name
        if init == "magnitude":
            mask.init_from_weight(weight)
        mask.train(module.training)
        chain = [mask, *(p for p in weight_chain(module))]
        rebuild_chain(module, chain)
        masks.append(mask)
    if skipped:
        warnings.warn(
            f"apply_dpp({granularity!r}) left {len(skipped)} layer(s) dense: " + "; ".join(skipped),
            stacklevel=2,
        )
    return masks


def _mask_items(model_or_masks: nn.Module | Iterable[nn.Module]) -> list[tuple[str, MaskLike]]:
    """``(name, mask)`` for every DPP mask and :class:`GumbelTopKGate` in the input."""
    if isinstance(model_or_masks, nn.Module) and not isinstance(
        model_or_masks, (TopKMask, GumbelTopKGate)
    ):
        items: list[tuple[str, MaskLike]] = []
        for path, mod in model_or_masks.named_modules():
            if isinstance(mod, TopKMask):
                items.append((mod.layer_name or path.split(".parametrizations.")[0], mod))
            elif isinstance(mod, GumbelTopKGate):
                items.append((path, mod))
        return items
    mods = [model_or_masks] if isinstance(model_or_masks, nn.Module) else list(model_or_masks)
    out: list[tuple[str, MaskLike]] = []
    for i, m in enumerate(mods):
        if not isinstance(m, (TopKMask, GumbelTopKGate)):
            raise TypeError(
                f"Expected DPP masks or GumbelTopKGate modules, got {type(m).__name__}."
            )
        out.append((getattr(m, "layer_name", "") or str(i), m))
    return out


def get_dpp_masks(model: nn.Module) -> list[TopKMask]:
    """The kernel/weight DPP masks registered on ``model`` (``[]`` if none)."""
    return [m for m in model.modules() if isinstance(m, TopKMask)]


def dpp_temperature(progress: float, start: float = 5.0, end: float = 0.5) -> float:
    """Linear DPP temperature schedule: ``start`` at ``progress=0`` to ``end`` at ``progress=1``.

    Example:
        >>> dpp_temperature(0.5)
        2.75
    """
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def set_dpp_temperature(model_or_masks: nn.Module | Iterable[nn.Module], tau: float) -> int:
    """Set ``tau`` on every DPP mask and Gumbel top-k gate; returns how many were set."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}.")
    items = _mask_items(model_or_masks)
    for _, m in items:
        m.temperature.fill_(float(tau))
    return len(items)


def fold_dpp_masks(model: nn.Module) -> list[str]:
    """Multiply every DPP mask's deterministic top-k into its weight and remove the mask.

    In place. Other weight parametrizations (e.g. fake-quant) stay. The weight parameter remains
    the same object; afterwards the model's eval outputs are unchanged and its ``state_dict``
    has plain ``<layer>.weight`` keys again (if no other parametrization is left).

    Returns:
        The names of the folded layers.
    """
    folded = []
    for name, module in list(model.named_modules()):
        if _existing_mask(module) is None:
            continue
        chain = weight_chain(module)
        with torch.no_grad():
            weight = raw_weight(module).detach().clone()
            for p in chain:
                if isinstance(p, TopKMask):
                    weight = p.apply_hard(weight)
        rebuild_chain(module, [p for p in chain if not isinstance(p, TopKMask)], weight=weight)
        folded.append(name)
    return folded


_LOGITS_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.weight\.(\d+)\.logits$")


def restore_dpp_masks(model: nn.Module, state_dict: Mapping[str, Any]) -> list[TopKMask]:
    """Give ``model`` the DPP masks a ``state_dict`` was saved with, so that it loads strictly.

    Everything needed is in the saved tensors: the logits' shape ``[rows, n]`` and the
    ``num_kept`` buffer (``k``) of each masked layer give its granularity (``rows * n`` equal
    to the weight's size: weight granularity with groups of ``n``; to ``C_out * C_in``: kernel
    granularity with tiles of ``n``). Layers that already have a mask are left alone. Weight
    fake-quant holds no state and is not restored (call
    :func:`~lightning_prune.dpp.enable_fake_quant` again if needed).

    Args:
        model: the model about to load ``state_dict`` (e.g. in ``on_load_checkpoint``).
        state_dict: the saved ``state_dict`` (or a Lightning checkpoint's ``"state_dict"``).

    Returns:
        The masks added.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(8, 4, 3))
        >>> _ = apply_dpp(net, "kernel", k=3)
        >>> fresh = nn.Sequential(nn.Conv2d(8, 4, 3))
        >>> [(m.k, m.n, type(m).__name__) for m in restore_dpp_masks(fresh, net.state_dict())]
        [(3, 8, 'KernelTopK')]
        >>> _ = fresh.load_state_dict(net.state_dict())
    """
    modules = dict(model.named_modules())
    added: list[TopKMask] = []
    for key, logits in state_dict.items():
        match = _LOGITS_KEY.match(key)
        if match is None or not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            continue
        prefix = match.group(1) or ""
        layer = modules.get(prefix)
        if layer is None or _existing_mask(layer) is not None:
            continue
        weight = raw_weight(layer)
        rows, n = (int(v) for v in logits.shape)
        kept = state_dict.get(key[: -len("logits")] + "num_kept")
        k = int(kept) if isinstance(kept, torch.Tensor) else n
        shape = tuple(weight.shape)
        if rows * n == math.prod(shape):
            mask: TopKMask = WeightTopK(shape, k=k, n=n)
        elif rows * n == shape[0] * shape[1]:
            mask = KernelTopK(shape, k=k, tile=n)
        else:
            raise ValueError(
                f"The saved DPP mask of {prefix or 'the model'} ({rows} rows of {n}) does not fit "
                f"its weight {shape}: load it into the architecture it was saved from."
            )
        mask = mask.to(weight.device)
        mask.layer_name = prefix
        mask.train(layer.training)
        rebuild_chain(layer, [mask, *weight_chain(layer)])
        added.append(mask)
    return added
