"""What the capture front-ends (torch.fx, torch.export) share.

Each front-end does two things, kept apart on purpose:

1. *capture*: run its tracer on the model. Whatever goes wrong there is the tracer meeting
   the model's Python (control flow on tensors, shape-dependent branches, ops it cannot run),
   raised as :class:`CaptureError`, the only error that lets :func:`~.trace.capture` fall back
   to the other front-end;
2. *conversion*: normalise every captured node into a :class:`~.ops.table.Call` and read it
   with the rule of the one operation table (:func:`op_node`). An error here is a bug of the
   engine and propagates as it is.

Both front-ends treat the same modules as single operations (:func:`is_leaf`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from lightning_prune.graph.constants import constant_layouts
from lightning_prune.graph.exclude import matches
from lightning_prune.graph.ir import OpNode, Shape
from lightning_prune.graph.ops import OPS, Call, Op, Rule

__all__ = [
    "CaptureError",
    "annotate_constants",
    "constant_node",
    "is_leaf",
    "op_node",
    "own_tensors",
    "shape_of",
]


class CaptureError(Exception):
    """A tracer could not capture the model (the cause is chained as ``__cause__``).

    Args:
        stage: what failed (``"torch.fx"``, ``"ShapeProp"``, ``"torch.export"``).
        cause: the tracer's exception.
    """

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage
        self.cause = cause


def is_leaf(module: nn.Module, path: str, exclude: tuple[str, ...]) -> bool:
    """Whether a call of ``module`` (at ``path``) is one operation rather than traced through.

    Leaves are excluded modules, classes registered as leaves in the operation table, and
    ``torch.nn`` layers (not containers), as torch.fx's default tracer has them.
    """
    if path and matches(path, exclude):
        return True
    if OPS.is_leaf_class(type(module)):
        return True
    if isinstance(module, nn.Sequential):
        return False
    return type(module).__module__.startswith(("torch.nn", "torch.ao.nn"))


def shape_of(meta: Any) -> Shape | list[Shape | None] | None:
    """Shape of a tensor, a list of shapes for a tuple of tensors, else ``None``."""
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return tuple(int(d) for d in meta.shape)
    if isinstance(meta, (tuple, list)):
        return [tuple(int(d) for d in m.shape) if hasattr(m, "shape") else None for m in meta]
    return None


def own_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model``, by qualified name."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    return {**tensors, **dict(model.named_buffers(remove_duplicate=False))}


def constant_node(
    name: str, qualified: str, shape: Any, tensors: dict[str, torch.Tensor], where: str
) -> OpNode:
    """A constant the graph reads: a parameter or buffer when ``qualified`` names one.

    Its ``param`` attribute then names it, so that a per-channel operand derived from it can
    be sliced with the channels it meets (``tensors``: see :func:`own_tensors`).
    """
    value = tensors.get(qualified)
    attrs = {} if value is None else {"param": qualified, "param_shape": tuple(value.shape)}
    return OpNode(name, "constant", attrs=attrs, shape=shape, where=where)


#: Kinds of operations that keep the per-element order of a constant they are applied to.
_DERIVING = ("pointwise", "reshape")


def _derived(call: Call, rule: Rule | None) -> str | None:
    """The operand a data-free call derives its value from element by element, if any."""
    if rule is None or call.path is not None or isinstance(call.shape, list):
        return None
    operands = {call.operand(x) for x in (*call.args, *call.kwargs.values())} - {None}
    if len(operands) != 1:
        return None
    return operands.pop() if rule(call).kind in _DERIVING else None


def op_node(
    name: str,
    call: Call,
    rule: Rule | None,
    where: Callable[[Op], str],
    scope: str,
    scope_call: str = "",
) -> OpNode:
    """Read ``call`` with its rule and build the graph node.

    A call with a non-tensor output, or without data operands (it computes from constants
    only), carries no channels of the model's inputs and is ignored; one that reshapes or
    maps element by element a single constant is a ``"constant"`` derived from it. A call
    without a rule is unknown: every data operand is pinned.
    """
    if call.shape is None:
        return OpNode(name, "ignore", where=call.op, scope=scope, scope_call=scope_call)
    values = call.values()
    if not values:
        source = _derived(call, rule)
        inputs: list[str | None] = [source] if source else []
        kind = "constant" if source else "ignore"
        return OpNode(
            name, kind, inputs, shape=call.shape, where=call.op, scope=scope, scope_call=scope_call
        )
    op = rule(call) if rule is not None else Op("unknown", list(values), {"op": call.op})
    return OpNode(
        name,
        op.kind,
        op.inputs,
        op.attrs,
        call.shape,
        module=op.module,
        where=where(op),
        scope=scope,
        scope_call=scope_call,
    )


def annotate_constants(
    ops: list[OpNode],
    nodes: Iterable[fx.Node],
    constants: Mapping[str, str],
    shapes: Mapping[str, Any],
) -> list[OpNode]:
    """Record in ``attrs["const"]`` the parameter layout of every constant node of ``ops``.

    See :mod:`~lightning_prune.graph.constants`.
    """
    layouts = constant_layouts(nodes, constants, shapes)
    for op in ops:
        if op.name in layouts:
            op.attrs["const"] = layouts[op.name]
    return ops
