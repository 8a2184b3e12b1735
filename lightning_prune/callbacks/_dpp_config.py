"""Argument checks of :class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`.

Every check raises with a message that names the fix; they run in the callback's ``__init__``
(the arguments) and ``setup`` (the module's own penalty).
"""

from __future__ import annotations

import os
from typing import Literal

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule

from lightning_prune.module.mixin import PrunableMixin

__all__ = ["MIXIN_ENTROPY_TWICE", "Granularity", "check_arguments", "check_entropy_once"]

Granularity = Literal["kernel", "weight"]

MIXIN_ENTROPY_TWICE = (
    "{name}'s penalty already has a 'dpp_entropy' term and DynamicProbabilisticPruning adds "
    "its own (entropy_weight={weight}): the entropy would count twice. Set entropy_weight: 0 "
    "on the callback, or remove the term from the module's penalty."
)


def check_arguments(
    granularity: str,
    k: int | None,
    n: int,
    keep_ratio: float | None,
    tile: int | None,
    layers: dict[str, int | float] | None,
    init: str,
    temperature: tuple[float, float] | None,
    entropy_weight: float,
    filename: str,
) -> tuple[float, float] | None:
    """Check the callback's arguments (see its docstring for their meaning).

    Returns:
        ``temperature`` as a pair of floats (``None`` stays ``None``).

    Raises:
        ValueError: for inconsistent arguments (the message names the fix).

    Example:
        >>> check_arguments("weight", 2, 4, None, None, None, "uniform", (5, 1), 1e-3, "dpp")
        (5.0, 1.0)
    """
    if granularity not in ("kernel", "weight"):
        raise ValueError(
            f"granularity must be 'kernel' or 'weight', got {granularity!r}; for feature maps "
            "use the 'gumbel_topk' channel gate (gate: gumbel_topk)."
        )
    if init not in ("uniform", "magnitude"):
        raise ValueError(f"init must be 'uniform' or 'magnitude', got {init!r}.")
    if granularity == "weight" and (keep_ratio is not None or tile is not None):
        raise ValueError(
            "keep_ratio and tile apply to kernel granularity; at weight granularity give k "
            "(kept) and n (group size), e.g. k=2, n=4 for 2:4."
        )
    if k is not None and keep_ratio is not None:
        raise ValueError(f"Give k or keep_ratio, not both (k={k}, keep_ratio={keep_ratio}).")
    if granularity == "kernel" and k is None and keep_ratio is None and not layers:
        raise ValueError(
            "Kernel granularity needs the kernels kept per row: k, keep_ratio, or per-layer "
            "values in layers."
        )
    if keep_ratio is not None and not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}.")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    for pattern, value in (layers or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"layers[{pattern!r}] must be a k (int) or a keep ratio (float).")
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(
                f"layers[{pattern!r}] = {value}: a float is a keep ratio in (0, 1); give an "
                "int for k."
            )
    if temperature is not None:
        temperature = tuple(float(t) for t in temperature)  # type: ignore[assignment]
        if len(temperature) != 2 or min(temperature) <= 0:
            raise ValueError(f"temperature is a positive (start, end) pair, got {temperature!r}.")
    if entropy_weight < 0:
        raise ValueError(f"entropy_weight must be >= 0, got {entropy_weight}.")
    if not filename or os.sep in filename or "/" in filename:
        raise ValueError(f"filename must be a plain file stem such as 'dpp', got {filename!r}.")
    return temperature


def check_entropy_once(pl_module: LightningModule, entropy_weight: float) -> None:
    """Refuse a :class:`~lightning_prune.PrunableMixin` whose penalty has its own entropy term.

    Raises:
        MisconfigurationException: the entropy would count twice (the message names the fix).
    """
    penalty = getattr(pl_module, "sparsity_penalty", None)
    if isinstance(pl_module, PrunableMixin) and any(
        t.name == "dpp_entropy" for t in getattr(penalty, "terms", ())
    ):
        raise MisconfigurationException(
            MIXIN_ENTROPY_TWICE.format(name=type(pl_module).__name__, weight=entropy_weight)
        )
