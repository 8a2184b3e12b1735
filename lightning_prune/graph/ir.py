"""A small, backend-neutral graph IR: what the channel analysis needs from a traced model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Shape = tuple[int, ...]


@dataclass
class OpNode:
    """One operation of the traced model.

    Attributes:
        name: unique node name.
        kind: the channel rule of the analyser that reads it (``"conv"``, ``"linear"``,
            ``"norm"``, ``"layer_norm"``, ``"source"``, ``"pointwise"``, ``"binary"``,
            ``"cat"``, ``"stack"``, ``"reshape"``, ``"permute"``, ``"expand"``, ``"index"``,
            ``"reduce"``, ``"slice"``, ``"split"``, ``"getitem"``, ``"matmul"``,
            ``"attention"``, ``"mha"``, ``"input"``, ``"output"``, ``"constant"``,
            ``"channelwise"``, ``"ignore"`` or ``"unknown"``), as the operation table's rule
            for the captured operation says (see :mod:`lightning_prune.graph.ops`).
        inputs: names of the tensor-valued inputs, in the op's argument order (``None`` stands
            for a non-tensor operand of a binary op).
        attrs: kind-specific attributes (``dim``, ``chunks``, ``op``, ``zero_preserving``, ...;
            ``const``: the :class:`~lightning_prune.graph.constants.ConstantLayout` of a tensor
            computed from one parameter).
        shape: output shape for a tensor, a list of shapes for a tuple output, else ``None``.
        module: the ``nn.Module`` path for module calls (conv, linear, norm), else ``None``.
        where: a human-readable location for messages (operation and module path).
    """

    name: str
    kind: str
    inputs: list[str | None] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: Shape | list[Shape | None] | None = None
    module: str | None = None
    where: str = ""
    #: Path of the innermost module whose forward issued this operation ("" at the root).
    scope: str = ""
    #: Which call of that module it was issued in (the tracer's module-stack key: ``"@<n>"``
    #: ends the key of the n-th repeated call of a module called several times).
    scope_call: str = ""


@dataclass
class Graph:
    """Nodes in topological order plus the backend that produced them."""

    nodes: list[OpNode]
    backend: str
    #: FLOPs of the capturing forward pass (``torch.utils.flop_counter``), when measured.
    total_flops: int | None = None
