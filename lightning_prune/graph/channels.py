"""Data model of the channel analysis: elements, units and per-module channel maps.

Every output channel of a producer is an *element* (an int); :class:`_UnionFind` merges
elements into *units* and records why a unit is *pinned*. A :class:`_Val` is the channel map
of one tensor, :class:`ModuleChannels` how one module's weights are indexed by elements, and
:class:`ChannelAnalysis` the result of :func:`~lightning_prune.graph.analysis.analyse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_prune.graph.channel_args import SizedCall

__all__ = ["ChannelAnalysis", "ModuleChannels"]

_OUTPUT = "model output"
_EXCLUDED = "excluded by the user"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pins: dict[int, set[str]] = {}

    def new(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        if rb in self.pins:
            self.pins.setdefault(ra, set()).update(self.pins.pop(rb))

    def pin(self, elems: list[int], reason: str) -> None:
        for e in elems:
            self.pins.setdefault(self.find(e), set()).add(reason)

    def pinned(self, e: int) -> set[str]:
        return self.pins.get(self.find(e), set())


@dataclass
class _Val:
    """Channel map of a tensor: an element per channel, and why a channel is not zero-safe.

    The channels lie along ``axes`` (tensor dimensions; ``(1,)`` for NCHW tensors, the last
    dimension for token / channels-last tensors). A value whose channels were split over
    several dimensions (the heads and head width of attention) has one element per
    combination, row-major over ``axes`` in the order listed, ``dims`` giving their sizes.
    """

    elems: list[int]
    taint: list[str | None]
    axes: tuple[int, ...] = (1,)
    dims: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.dims:
            self.dims = (len(self.elems),)

    @property
    def axis(self) -> int | None:
        """The channel dimension of a single-axis value (``None`` when split over several)."""
        return self.axes[0] if len(self.axes) == 1 else None

    def moved(self, axes: tuple[int, ...], dims: tuple[int, ...] | None = None) -> _Val:
        """The same channels along other tensor dimensions."""
        return _Val(self.elems, self.taint, axes, dims or self.dims)


@dataclass
class ModuleChannels:
    """How one module's weights are indexed by units (element ids before grouping)."""

    path: str
    #: "conv" (in/out), "norm" (per-channel), "grouped" (grouped / depthwise conv) or
    #: "source" (outputs only: a layer whose output does not depend on its input)
    role: str
    type_name: str
    inputs: list[int] | None = None
    outputs: list[int] | None = None
    feeds_norm_only: bool = True
    #: role-specific details (``"param"``: the parameter's name and channel axis; ``"op"``:
    #: FLOPs of the operation; ``"heads"``: sizes of the split)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyse`: union-find over elements plus per-module channel maps."""

    uf: _UnionFind
    modules: dict[str, ModuleChannels]
    group_of: dict[int, int] = field(default_factory=dict)  # unit root -> group id
    groups: list[list[int]] = field(default_factory=list)  # group id -> unit roots (ordered)
    group_producers: list[list[str]] = field(default_factory=list)
    ungated: dict[str, set[str]] = field(default_factory=dict)  # reason -> modules
    #: Splits and slices whose sizes / bounds count channels (collapse rewrites them).
    calls: list[SizedCall] = field(default_factory=list)

    def unit(self, elem: int) -> int:
        """The unit (union-find root) of an element."""
        return self.uf.find(elem)


def _norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim
