"""Gate families by name: ``get_gate_class("sigmoid")`` or pass the class itself."""

from __future__ import annotations

from lightning_prune._registry import Registry
from lightning_prune.gates.base import ChannelGate

GATES: Registry[type[ChannelGate]] = Registry("gate")


def register_gate(name: str):
    """Class decorator registering a :class:`ChannelGate` subclass under ``name``."""
    return GATES.register(name)


def get_gate_class(gate: str | type[ChannelGate]) -> type[ChannelGate]:
    """Resolve a gate given by registered name or by class.

    Raises:
        KeyError: for an unknown name (the message lists the registered names).
        TypeError: for a class that does not derive from :class:`ChannelGate`.
    """
    if isinstance(gate, str):
        return GATES.get(gate)
    if isinstance(gate, type) and issubclass(gate, ChannelGate):
        return gate
    raise TypeError(
        f"gate must be a registered name ({', '.join(GATES.names())}) or a ChannelGate "
        f"subclass, got {gate!r}."
    )
