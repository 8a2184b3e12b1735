"""Layer selection by name pattern and access to a layer's raw / effective weight."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

#: Layer types DPP masks, MAC counts and int8 export apply to (transposed convs are not).
LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

Patterns = str | Sequence[str] | None


def _as_tuple(patterns: Patterns) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def matches(path: str, pattern: str) -> bool:
    """Whether a module path matches a selection pattern.

    It does when ``path`` is ``pattern``, lies under it (``"layer1"`` matches
    ``"layer1.0.conv1"``), or matches it as a shell glob (``"layer*.conv2"``).
    """
    return path == pattern or path.startswith(pattern + ".") or fnmatchcase(path, pattern)


def select_layers(
    model: nn.Module, include: Patterns = None, exclude: Patterns = ()
) -> list[tuple[str, nn.Module]]:
    """Conv/linear layers of ``model`` selected by name patterns, in module order.

    Args:
        model: the model.
        include: patterns a layer must match (``None``: every conv/linear layer).
        exclude: patterns removing layers (applied after ``include``).
    """
    inc, exc = _as_tuple(include), _as_tuple(exclude)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, LAYER_TYPES) or ".parametrizations." in f".{name}.":
            continue
        if inc and not any(matches(name, p) for p in inc):
            continue
        if any(matches(name, p) for p in exc):
            continue
        out.append((name, module))
    return out


def weight_plist(module: nn.Module) -> parametrize.ParametrizationList:
    """The ``ParametrizationList`` of ``module.weight`` (the module must be parametrized)."""
    return cast(Any, module).parametrizations.weight


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The stored (unmasked, unquantised) weight of a layer, parametrized or not."""
    if parametrize.is_parametrized(module, "weight"):
        return cast(torch.Tensor, weight_plist(module).original)
    return cast(torch.Tensor, module.weight)


def weight_chain(module: nn.Module) -> list[nn.Module]:
    """The parametrizations applied to ``module.weight``, in order (empty if none)."""
    if parametrize.is_parametrized(module, "weight"):
        return list(weight_plist(module))
    return []


def _remove_weight_parametrization(module: nn.Module) -> None:
    """``remove_parametrizations(module, "weight", leave_parametrized=False)``, copy-safe.

    ``copy.deepcopy`` of a parametrized module shares its injected ``Parametrized<Cls>`` class
    with the original, and ``remove_parametrizations`` deletes the property from that class,
    breaking every other copy (torch 2.x). Give this module a private clone of the class first.
    """
    cls = module.__class__
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def rebuild_chain(
    module: nn.Module, chain: list[nn.Module], weight: torch.Tensor | None = None
) -> None:
    """Replace the weight parametrizations of ``module`` by ``chain``.

    The stored weight parameter stays the same object (optimizers keep tracking it); with
    ``weight`` given, its values are overwritten first (used to fold masks into it). An existing
    parametrization list is edited in place, so deep copies of the module are unaffected.
    """
    if parametrize.is_parametrized(module, "weight"):
        plist = weight_plist(module)
        if weight is not None:
            with torch.no_grad():
                raw_weight(module).copy_(weight)
        if not chain:
            _remove_weight_parametrization(module)
            return
        while len(plist):
            del plist[-1]
        for p in chain:
            plist.append(p)
        return
    if weight is not None:
        with torch.no_grad():
            raw_weight(module).copy_(weight)
    for p in chain:
        parametrize.register_parametrization(module, "weight", p)
