"""What augmentation records on a model: groups, per-module channel maps, dense costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_prune.counting import GATES_ATTR
from lightning_prune.errors import NotAugmentedError
from lightning_prune.gates.base import ChannelGate

__all__ = [
    "GATES_ATTR",
    "CallSpec",
    "GateGroup",
    "GroupSpec",
    "ModuleSpec",
    "PruneState",
    "UnitRef",
]
#: Key in the model's ``__dict__`` holding its :class:`PruneState`.
STATE_ATTR = "_lp_state"

#: A channel's unit: (group index, position in the group's gate), or None for a fixed channel.
UnitRef = tuple[int, int] | None
_T = TypeVar("_T")


@dataclass
class ModuleSpec:
    """How one prunable module's weights are indexed by gate units.

    Attributes:
        path: module path in the model.
        role: ``"conv"`` (conv / linear: inputs and outputs), ``"grouped"`` (grouped or
            depthwise conv: whole blocks), ``"norm"`` (per-channel parameters) or ``"source"``
            (a constant layer: per-output-channel values, no input channels).
        type_name: class name, checked when a plan is applied.
        in_units: unit of each input channel (``None`` for norms).
        out_units: unit of each output channel (for norms: of each channel).
        flops: FLOPs of the module for the example input (all its calls).
        weight_params: parameters scaled by input and output widths.
        bias_params: parameters scaled by the output width only.
        site: whether the gate is applied to this module's output.
        attrs: role-specific details (``"param"``: ``owner``, ``name``, ``axis``; ``"heads"``:
            ``scope``, ``size``, ``rest``; ``"norm"``: ``layer_norm``).
    """

    path: str
    role: str
    type_name: str
    in_units: list[UnitRef] | None
    out_units: list[UnitRef]
    flops: float = 0.0
    weight_params: int = 0
    bias_params: int = 0
    site: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallSpec:
    """A split or slice whose sizes / bounds count channels (see ``graph.channel_args``).

    Attributes:
        key: the call as the model's code makes it.
        units: unit of each of its input channels; ``None`` when the call is left as it is.
        spans: ``(start, stop)`` input positions of each piece (split) or of the selection.
    """

    key: tuple
    units: list[UnitRef] | None
    spans: list[tuple[int, int]]


@dataclass
class GroupSpec:
    """One gated channel group."""

    name: str
    num_units: int
    producers: list[str]
    modules: list[str] = field(default_factory=list)
    #: Closing the whole group would cut an output off the input; its gate keeps one unit.
    critical: bool = False


@dataclass
class PruneState:
    """Everything :func:`~lightning_prune.augment` learned about a model."""

    gate_type: str
    groups: list[GroupSpec]
    modules: dict[str, ModuleSpec]
    example_inputs: tuple[torch.Tensor, ...]
    dense_flops: float
    dense_params: float
    backend: str
    #: Per module path: its calls with channel-counting arguments, in the order it makes them.
    calls: dict[str, list[CallSpec]] = field(default_factory=dict)
    #: How LayerNorm channels were treated (``"pin"`` or ``"renormalize"``, see ``augment``).
    embedding: str = "pin"
    _index_cache: dict[str, object] = field(default_factory=dict, repr=False)

    def cached(self, key: str, build: Callable[[], _T], kind: type[_T]) -> _T:
        """A value derived from this (immutable) state, built once per ``key``.

        Cost indices and flat unit maps are built from the state's per-channel maps on first
        use and shared by every later call (and every copy of the model).

        Args:
            key: what the value is, e.g. ``"flat"`` or ``"cost:cpu"``.
            build: makes the value when it is not cached yet.
            kind: the value's type; a cached value of another type is rebuilt.
        """
        value = self._index_cache.get(key)
        if not isinstance(value, kind):
            value = build()
            self._index_cache[key] = value
        return value

    def __deepcopy__(self, memo: dict) -> PruneState:
        # Immutable after augmentation: copies of a model share it (deepcopy of the per-channel
        # maps would dominate the cost of copying a large model).
        return self


@dataclass
class GateGroup:
    """Public view of one gated group (see :func:`~lightning_prune.get_groups`)."""

    name: str
    gate: ChannelGate
    num_channels: int
    producers: list[str]
    modules: list[str]
    #: Whether closing every channel would cut a model output off its input (the gate then
    #: keeps at least one unit, see :attr:`ChannelGate.min_kept`).
    critical: bool = False


def get_state(model: nn.Module) -> PruneState | None:
    """The model's :class:`PruneState`, or ``None`` when it was never augmented."""
    state = model.__dict__.get(STATE_ATTR)
    return state if isinstance(state, PruneState) else None


def require_state(model: nn.Module, action: str) -> PruneState:
    """The model's state or a :class:`NotAugmentedError` naming ``action``."""
    state = get_state(model)
    if state is None:
        raise NotAugmentedError(
            f"Cannot {action}: {type(model).__name__} has no gates. Call "
            "`lightning_prune.augment(model, example_inputs)` first (Lightning: use "
            "PrunableMixin or the RelaxedPruning callback)."
        )
    return state


def gate_modules(model: nn.Module) -> list[ChannelGate]:
    """The gates of an augmented model in group order (empty list otherwise)."""
    state = get_state(model)
    container = getattr(model, GATES_ATTR, None)
    if state is None or container is None:
        return []
    return [container[g.name] for g in state.groups]


def strip_gates(model: nn.Module) -> None:
    """Remove gates, sites and the recorded state from ``model`` (in place)."""
    from lightning_prune.surgery.gating import detach_sites, restore_root

    detach_sites(model)
    restore_root(model)
    if GATES_ATTR in model._modules:
        del model._modules[GATES_ATTR]
    model.__dict__.pop(STATE_ATTR, None)
