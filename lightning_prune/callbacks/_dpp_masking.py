"""Which layers the DPP callback masks, and with which ``k``.

``layers`` patterns are masked first, each with its own ``k`` (int) or keep ratio (float); the
remaining selected conv/linear layers get the callback's ``k`` / ``keep_ratio``. The same
selection gets the optional int8 fake-quant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_prune.dpp import TopKMask, apply_dpp, enable_fake_quant, get_dpp_masks
from lightning_prune.dpp._select import select_layers

__all__ = [
    "MaskSettings",
    "apply_masks",
    "check_masked",
    "enable_quantization",
    "layer_kwargs",
    "masking_summary",
]


def layer_kwargs(granularity: str, value: int | float, n: int, tile: int | None) -> dict[str, Any]:
    """The size arguments of :func:`~lightning_prune.dpp.apply_dpp` for one ``layers`` value.

    Example:
        >>> layer_kwargs("weight", 0.5, 4, None), layer_kwargs("kernel", 3, 4, 8)
        ({'k': 2, 'n': 4}, {'k': 3, 'tile': 8})
    """
    if isinstance(value, float):
        if granularity == "kernel":
            return {"keep_ratio": value, "tile": tile}
        return {"k": max(1, round(value * n)), "n": n}
    if granularity == "kernel":
        return {"k": int(value), "tile": tile}
    return {"k": int(value), "n": n}


class MaskSettings(Protocol):
    """What :func:`apply_masks` reads (the callback's arguments of the same names)."""

    granularity: Any
    k: int | None
    n: int
    keep_ratio: float | None
    tile: int | None
    layers: dict[str, int | float]
    include: tuple[str, ...] | None
    exclude: tuple[str, ...]
    init: Literal["uniform", "magnitude"]
    noise_scale: float
    temperature: tuple[float, float]
    quantize_activations: bool


def apply_masks(model: nn.Module, settings: MaskSettings) -> list[TopKMask]:
    """Register the DPP masks described by ``settings`` on ``model`` (in place, idempotent).

    Returns:
        The masks of the selected layers, in module order.

    Raises:
        ValueError: when a ``layers`` pattern matches no conv/linear layer.
    """
    granularity, exclude = settings.granularity, settings.exclude
    common: dict[str, Any] = {
        "temperature": settings.temperature[0],
        "noise_scale": settings.noise_scale,
        "init": settings.init,
    }
    for pattern, value in settings.layers.items():
        if not select_layers(model, (pattern,), exclude):
            names = [name for name, _ in select_layers(model)]
            raise ValueError(
                f"DynamicProbabilisticPruning: layers pattern {pattern!r} matches no "
                f"conv/linear layer (after exclude); the layers are named like {names[:6]}."
            )
        apply_dpp(
            model,
            granularity,
            include=(pattern,),
            exclude=exclude,
            **layer_kwargs(granularity, value, settings.n, settings.tile),
            **common,
        )
    k, keep_ratio = settings.k, settings.keep_ratio
    if granularity == "weight" or k is not None or keep_ratio is not None:
        sizes: dict[str, Any]
        if granularity == "kernel":
            sizes = {"k": k, "keep_ratio": keep_ratio, "tile": settings.tile}
        else:
            sizes = {"k": k, "n": settings.n}
        apply_dpp(model, granularity, include=settings.include, exclude=exclude, **sizes, **common)
    return get_dpp_masks(model)


def enable_quantization(model: nn.Module, settings: MaskSettings) -> list[str]:
    """Add int8 fake-quant to the layers ``settings`` selects (weights, optionally inputs).

    Returns:
        The names of the quantised layers.
    """
    return enable_fake_quant(
        model,
        weights=True,
        activations=settings.quantize_activations,
        include=settings.include,
        exclude=settings.exclude,
    )


def check_masked(masks: Sequence[TopKMask], granularity: str, model: nn.Module) -> None:
    """Refuse a setup that masked no layer of ``model``.

    Raises:
        MisconfigurationException: when ``masks`` is empty (the message names the fix).
    """
    if not masks:
        raise MisconfigurationException(
            f"DynamicProbabilisticPruning({granularity!r}) masked no layer of "
            f"{type(model).__name__}: check include / exclude and that n (or tile) "
            "divides the layers' input channels."
        )


def masking_summary(masks: Sequence[TopKMask], granularity: str, quantize: bool) -> str:
    """The one-line message logged when ``fit`` starts with ``masks``."""
    kept = sum(m.k * m.logits.shape[0] for m in masks)
    total = sum(m.n * m.logits.shape[0] for m in masks)
    return (
        f"DynamicProbabilisticPruning: {len(masks)} layers masked at "
        f"{granularity} granularity, {kept / total:.1%} of their weights kept"
        + (" (int8 fake-quant)" if quantize else "")
        + "."
    )
