"""Checks of :func:`~lightning_prune.augment`'s arguments, made before any tracing work."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from lightning_prune.errors import ArgumentError, PruningError
from lightning_prune.gates.base import ChannelGate

__all__ = ["check_augment_root", "check_gate_kwargs", "make_gates"]


def _accepted(gate_cls: type[ChannelGate]) -> tuple[list[str], bool]:
    """Keyword arguments of the gate class's constructor (after ``num_channels``)."""
    params = list(inspect.signature(gate_cls.__init__).parameters.values())[2:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_gate_kwargs(gate_cls: type[ChannelGate], gate_kwargs: Mapping[str, Any] | None) -> None:
    """Refuse ``gate_kwargs`` the gate class does not accept (a typo, ``num_channels``).

    Raises:
        ArgumentError: naming the unknown keyword, the closest accepted one and all of them.
    """
    if gate_kwargs is None:
        return
    if not isinstance(gate_kwargs, Mapping):
        raise ArgumentError(
            f"gate_kwargs must be a dict of keyword arguments for {gate_cls.__name__}, got "
            f"{type(gate_kwargs).__name__}."
        )
    names, anything = _accepted(gate_cls)
    for key in gate_kwargs:
        if key == "num_channels":
            raise ArgumentError(
                "gate_kwargs must not set num_channels: augment gives each gate the width of "
                "its channel group."
            )
        if anything or key in names:
            continue
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ArgumentError(
            f"gate_kwargs: {gate_cls.__name__} has no argument {key!r}.{hint} It accepts: "
            f"{', '.join(names)}."
        )


def check_augment_root(model: nn.Module) -> None:
    """Refuse a root module that cannot carry the gates' container.

    Raises:
        PruningError: for an ``nn.ModuleList`` / ``nn.ModuleDict`` root (no forward) or a
            subclass of ``nn.Sequential`` (its forward would run the container).
    """
    name = type(model).__name__
    if isinstance(model, (nn.ModuleList, nn.ModuleDict)):
        raise PruningError(
            f"Cannot add gates to a {name} root: a {name} has no forward of its own. Wrap it "
            "in a module whose forward calls its layers (or use a plain nn.Sequential)."
        )
    if isinstance(model, nn.Sequential) and type(model) is not nn.Sequential:
        raise PruningError(
            f"Cannot add gates to a {name} root: its forward iterates over its children. "
            "Wrap it in a module with an explicit forward (or a plain nn.Sequential)."
        )


def make_gates(
    gate_cls: type[ChannelGate], widths: list[int], gate_kwargs: Mapping[str, Any] | None
) -> list[ChannelGate]:
    """One gate per group width; a value the gate class refuses is reported with its group.

    Raises:
        ArgumentError: when ``gate_kwargs`` hold a value the gate class refuses.
    """
    gates = []
    for width in widths:
        try:
            gates.append(gate_cls(width, **dict(gate_kwargs or {})))
        except (TypeError, ValueError) as err:
            raise ArgumentError(
                f"gate_kwargs {dict(gate_kwargs or {})} do not fit a {gate_cls.__name__} over a "
                f"group of {width} channels: {err}"
            ) from err
    return gates
