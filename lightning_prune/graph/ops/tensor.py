"""Weightless tensor operations: arithmetic, concatenation, reshapes, reductions, slicing.

Each rule reads the operands the analyser's handler of the same kind needs (see
:mod:`lightning_prune.graph._tensor_ops`). Argument positions follow ATen's schemas, which
the torch functions and Tensor methods of the same name share.
"""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx

from lightning_prune.graph.ops.layout import index_items
from lightning_prune.graph.ops.table import Call, Op, Rule, register_op


def _binary(op: str) -> Rule:
    def rule(call: Call) -> Op:
        a, b = call.arg(0, "input"), call.arg(1, "other")
        scalar = next((x for x in (b, a) if call.operand(x) is None), None)
        return Op("binary", [call.operand(a), call.operand(b)], {"op": op, "scalar": scalar})

    return rule


register_op("aten.add")(_binary("add"))
register_op("aten.sub", "aten.rsub", "aten.subtract")(_binary("sub"))
register_op("aten.mul", "aten.multiply")(_binary("mul"))
register_op("aten.div", "aten.divide", "aten.true_divide")(_binary("div"))


def _dims(value: Any) -> list[int] | None:
    """A reduction's dimensions; ``None`` for a full reduction (no ``dim``, or ``dim=[]``)."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    dims = [int(v) for v in value]
    return dims or None


@register_op("aten.cat", "aten.concat", "aten.concatenate")
def _cat(call: Call) -> Op:
    tensors = call.arg(0, "tensors")
    return Op("cat", [call.operand(t) for t in tensors], {"dim": call.arg(1, "dim", 0)})


@register_op("aten.stack")
def _stack(call: Call) -> Op:
    tensors = call.arg(0, "tensors")
    return Op("stack", [call.operand(t) for t in tensors], {"dim": call.arg(1, "dim", 0)})


@register_op("aten.view", "aten.reshape", "aten._unsafe_view")
def _reshape(call: Call) -> Op:
    """``x.view(*sizes)``; sizes computed in forward from tensor sizes are recorded.

    A size the model computes (``C // self.num_heads``) rather than reads from an attribute
    or infers (``-1``) would keep its old value once channels are removed.
    """
    sizes = list(call.args[1:]) or list(call.kwargs.get("shape", call.kwargs.get("size", [])))
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = list(sizes[0])
    computed = [i for i, size in enumerate(sizes) if isinstance(size, fx.Node)]
    if not computed:  # all sizes known when captured (torch.export): nothing to tell apart
        return Op("reshape", list(call.values()[:1]))
    literal = [i for i, size in enumerate(sizes) if isinstance(size, int) and size != -1]
    return Op("reshape", list(call.values()[:1]), {"computed": computed, "literal": literal})


@register_op("aten.flatten")
def _flatten(call: Call) -> Op:
    return Op("reshape", list(call.values()[:1]))


@register_op("aten.mean", "aten.sum", "aten.amax")
def _reduce(call: Call) -> Op:
    return Op("reduce", list(call.values()[:1]), {"dims": _dims(call.arg(1, "dim"))})


@register_op("aten.split", "aten.split_with_sizes", "aten.unsafe_split")
def _split(call: Call) -> Op:
    names = ("split_size_or_sections", "split_size", "split_sizes")
    sizes = next((v for v in (call.arg(1, n) for n in names) if v is not None), None)
    return Op("split", list(call.values()[:1]), {"dim": call.arg(2, "dim", 0), "sizes": sizes})


@register_op("aten.chunk")
def _chunk(call: Call) -> Op:
    attrs = {"dim": call.arg(2, "dim", 0), "chunks": call.arg(1, "chunks")}
    return Op("split", list(call.values()[:1]), attrs)


@register_op("aten.slice")
def _slice(call: Call) -> Op:
    attrs = {
        "dim": call.arg(1, "dim", 0),
        "start": call.arg(2, "start"),
        "stop": call.arg(3, "end"),
        "step": call.arg(4, "step", 1),
    }
    if not all(v is None or isinstance(v, int) for v in attrs.values()):
        return Op("unknown", list(call.values()), {"op": call.op})
    return Op("slice", list(call.values()[:1]), attrs)


@register_op("aten.narrow")
def _narrow(call: Call) -> Op:
    dim, start, length = call.arg(1, "dim"), call.arg(2, "start"), call.arg(3, "length")
    if not all(isinstance(v, int) for v in (dim, start, length)):
        return Op("unknown", list(call.values()), {"op": call.op})
    attrs = {"dim": dim, "start": start, "stop": start + length, "step": 1}
    return Op("slice", list(call.values()[:1]), attrs)


def _channel_slice(index: Any, ndim: int) -> dict[str, Any] | None:
    """``x[:, a:b]`` (a slice of dimension 1 only): a slice recorded per call (see ``_slice``)."""
    items = index if isinstance(index, tuple) else (index,)
    full = slice(None)
    if len(items) < 2 or len(items) > ndim or not all(isinstance(i, slice) for i in items):
        return None
    if items[0] != full or items[1] == full or any(i != full for i in items[2:]):
        return None
    sl = items[1]
    return {"dim": 1, "start": sl.start, "stop": sl.stop, "step": sl.step}


@register_op(operator.getitem)
def _getitem(call: Call) -> Op:
    """An item of a tuple output, or indexing of a tensor (``x[:, :4]``, ``qkv[0]``)."""
    src, index = call.arg(0, "a"), call.arg(1, "b")
    shape = call.shape_of(src)
    if isinstance(shape, list):
        return Op("getitem", [call.operand(src)], {"index": index})
    if isinstance(shape, tuple) and call.is_data(src):
        sliced = _channel_slice(index, len(shape))
        if sliced is not None:
            return Op("slice", [call.operand(src)], sliced)
        items = index_items(index, len(shape))
        if items is None:
            return Op("unknown", [call.operand(src)], {"op": "tensor indexing"})
        return Op("index", [call.operand(src)], {"items": items})
    return Op("ignore")


#: Operations that only read metadata.
register_op(
    *("Tensor.size", "Tensor.dim", "Tensor.numel", "Tensor.__len__"),
    *("aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten._assert_tensor_metadata"),
)(lambda call: Op("ignore"))
