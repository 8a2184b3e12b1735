"""Where a model's constant tensors come from: which parameter dimension each dimension follows.

A relative position bias (``table[index].view(N, N, H).permute(2, 0, 1)``), a layer scale
(``gamma.reshape(1, -1, 1, 1)``) or a position embedding is computed from a parameter by
layout operations only. When such a tensor meets channels (added to attention logits with
one value per head, multiplied into a residual branch), collapse must slice the parameter
with them. Both capture front-ends record, for every such node, the parameter and the
parameter dimension that each of the node's dimensions runs along
(:class:`ConstantLayout`, in ``OpNode.attrs["const"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from lightning_prune.graph._layout import _blocks
from lightning_prune.graph.ops.layout import index_items, permutation
from lightning_prune.graph.ops.table import aten_name

__all__ = ["ConstantLayout", "constant_layouts"]

Shape = tuple[int, ...]
Axes = tuple[int | None, ...]

#: Operations that keep the layout of their (only) constant operand, element by element.
_SAME = frozenset(
    (
        *("contiguous", "clone", "detach", "alias", "to", "_to_copy", "type_as", "float"),
        *("double", "half", "bfloat16", "type", "lift_fresh_copy", "sigmoid", "tanh", "neg"),
        *("exp", "relu", "mul", "div", "add", "sub", "rsub", "pow", "abs", "clamp"),
    )
)
_VIEWS = frozenset(
    ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze")
)


@dataclass(frozen=True)
class ConstantLayout:
    """A constant tensor computed from one parameter (or buffer) by layout operations.

    Attributes:
        name: qualified name of the parameter.
        axes: for each dimension of the tensor, the parameter dimension it runs along, or
            ``None`` (a broadcast or gathered dimension).
        views: the shapes the parameter was viewed to on the way (``view(self.bias_shape)``),
            each with the parameter dimension of every one of its dimensions: a module that
            stores such a shape must update it when the parameter is sliced.
    """

    name: str
    axes: Axes
    views: tuple[tuple[Shape, Axes], ...] = ()


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return aten_name(str(target))
    name = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    return aten_name(str(name))


def _view_axes(src: Shape, out: Shape, axes: Axes) -> Axes:
    new: list[int | None] = [None] * len(out)
    for p, q, j, k in _blocks(src, out) or []:
        big_in = [d for d in range(p, q) if src[d] > 1]
        big_out = [d for d in range(j, k) if out[d] > 1]
        if len(big_in) == 1 and len(big_out) == 1:
            new[big_out[0]] = axes[big_in[0]]
    return tuple(new)


def _indexed_axes(src: Shape, out: Shape, axes: Axes, items: Sequence[Any]) -> Axes | None:
    """Layout after ``t[items]`` with one tensor index (advanced indexing of one dimension)."""
    tensors = [i for i, item in enumerate(items) if isinstance(item, fx.Node)]
    if len(tensors) != 1 or any(
        not isinstance(item, fx.Node) and item != slice(None) for item in items
    ):
        return None
    p = tensors[0]
    gathered = len(out) - (len(src) - 1)
    return (*axes[:p], *([None] * gathered), *axes[p + 1 :])


def _basic_indexed_axes(items: list[tuple[Any, ...]] | None, out: Shape, axes: Axes) -> Axes | None:
    """Layout after ``t[items]`` of full slices and new dimensions (``gamma[:, None, None]``)."""
    if items is None:
        return None
    new: list[int | None] = []
    rest = list(axes)
    for item in items:
        if item == ("none",):
            new.append(None)
        elif item == ("slice", None, None, None) and rest:
            new.append(rest.pop(0))
        else:
            return None
    new.extend(rest)
    return tuple(new) if len(new) == len(out) else None


class _Layouts:
    def __init__(self, constants: Mapping[str, str], shapes: Mapping[str, Any]) -> None:
        self.constants = constants
        self.shapes = shapes
        self.layouts: dict[str, ConstantLayout] = {}
        self.pure: set[str] = set(constants)  # nodes computed from constants only

    def visit(self, node: fx.Node) -> None:
        name = node.name
        shape = self.shapes.get(name)
        if name in self.constants:
            if isinstance(shape, tuple):
                self.layouts[name] = ConstantLayout(self.constants[name], tuple(range(len(shape))))
            return
        if node.op not in ("call_function", "call_method"):
            return
        # operands that are not tensors (sizes read from a data tensor) do not make data
        inputs = [i for i in node.all_input_nodes if isinstance(self.shapes.get(i.name), tuple)]
        if not inputs or any(i.name not in self.pure for i in inputs):
            return
        self.pure.add(name)
        laid = [i for i in inputs if i.name in self.layouts]
        first = node.args[0] if node.args else None
        if not laid or not isinstance(shape, tuple):
            return
        if isinstance(first, fx.Node) and first in laid and _op_name(node) not in _SAME:
            source = first  # indexed / viewed tensor: other operands are indices, sizes
        elif len(laid) == 1:
            source = laid[0]
        else:
            return
        axes = self._axes(node, source, shape)
        if axes is not None and any(a is not None for a in axes):
            base = self.layouts[source.name]
            views = base.views
            if _op_name(node) in _VIEWS and shape != self.shapes.get(source.name):
                views = (*views, (shape, axes))
            self.layouts[name] = ConstantLayout(base.name, axes, views)

    def _axes(self, node: fx.Node, source: fx.Node, out: Shape) -> Axes | None:
        src = self.shapes.get(source.name)
        layout = self.layouts[source.name]
        if not isinstance(src, tuple):
            return None
        op = _op_name(node)
        args = list(node.args)
        if not args or args[0] is not source:
            # the parameter is not the operand that is indexed / viewed (e.g. idx[table])
            return layout.axes if op in _SAME and src == out else None
        if op in _SAME:
            return layout.axes if src == out else None
        if op in _VIEWS or op in ("expand", "expand_as", "broadcast_to"):
            if op.startswith(("expand", "broadcast")) and len(out) >= len(src):
                pad: Axes = (None,) * (len(out) - len(src))
                tail = out[len(out) - len(src) :]
                kept = tuple(a if s == o else None for a, s, o in zip(layout.axes, src, tail))
                return pad + kept
            return _view_axes(src, out, layout.axes)
        if op in ("permute", "transpose", "swapaxes", "movedim", "t"):
            rest = args[1:]
            if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
                rest = list(rest[0])
            perm = permutation(op, rest, len(src))
            return None if perm is None else tuple(layout.axes[p] for p in perm)
        if op == "getitem":
            index = args[1] if len(args) > 1 else None
            items = list(index) if isinstance(index, tuple) else [index]
            if any(isinstance(i, fx.Node) for i in items):
                return _indexed_axes(src, out, layout.axes, items)
            return _basic_indexed_axes(index_items(index, len(src)), out, layout.axes)
        if op == "index" and len(args) > 1 and isinstance(args[1], (list, tuple)):
            items = [slice(None) if i is None else i for i in args[1]]
            return _indexed_axes(src, out, layout.axes, items)
        if op == "index_select" and len(args) > 2 and isinstance(args[1], int):
            items = [slice(None)] * args[1] + [args[2]]
            return _indexed_axes(src, out, layout.axes, items)
        return None


def constant_layouts(
    nodes: Iterable[fx.Node], constants: Mapping[str, str], shapes: Mapping[str, Any]
) -> dict[str, ConstantLayout]:
    """The :class:`ConstantLayout` of every node computed from a single parameter by layout ops.

    Args:
        nodes: the captured graph's nodes, in order.
        constants: qualified parameter / buffer name of every constant node.
        shapes: shape of every node.
    """
    walker = _Layouts(constants, shapes)
    for node in nodes:
        walker.visit(node)
    return walker.layouts


def is_parameter(model: torch.nn.Module, qualified: str) -> bool:
    """Whether ``qualified`` names a parameter of ``model`` (not a buffer)."""
    owner, _, name = qualified.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return name in module._parameters
