"""Layout operations: permutations, views that add or drop dimensions, selections, softmax.

Transformers and channels-last blocks move the channel dimension (``permute(0, 2, 3, 1)``,
``flatten(2).transpose(1, 2)``), split it into heads (``reshape(B, N, 3, H, D)``) and pick
pieces out of it (``unbind(0)``, ``qkv[0]``, ``x[:, 0]``). These rules describe each operation
by its effect on dimensions; the analyser follows the channel dimensions through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["index_items", "permutation"]


def permutation(op: str, args: Sequence[object], ndim: int) -> list[int] | None:
    """The permutation of ``permute`` / ``transpose`` / ``swapaxes`` / ``movedim`` / ``t``."""
    if op == "permute":
        first = args[0] if len(args) == 1 else None
        dims = list(first) if isinstance(first, (list, tuple)) else list(args)
        ints = [d for d in dims if isinstance(d, int)]
        if len(ints) != len(dims) or len(ints) != ndim:
            return None
        return [_norm(d, ndim) for d in ints]
    if op == "t":
        return [1, 0] if ndim == 2 else list(range(ndim))
    if op in ("transpose", "swapaxes", "swapdims") and len(args) >= 2:
        a, b = args[0], args[1]
        if not isinstance(a, int) or not isinstance(b, int):
            return None
        perm = list(range(ndim))
        a, b = _norm(a, ndim), _norm(b, ndim)
        perm[a], perm[b] = perm[b], perm[a]
        return perm
    if op == "movedim" and len(args) >= 2:
        src, dst = args[0], args[1]
        if not isinstance(src, int) or not isinstance(dst, int):
            return None
        rest = [d for d in range(ndim) if d != _norm(src, ndim)]
        rest.insert(_norm(dst, ndim), _norm(src, ndim))
        return rest
    return None


def _norm(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _src_ndim(call: Call) -> int:
    shape = call.shape_of(call.arg(0, "input"))
    return len(shape) if isinstance(shape, tuple) else 0


def _int_args(call: Call) -> list[Any]:
    """The operands after the tensor, with a single list argument unpacked."""
    rest = list(call.args[1:])
    if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
        rest = list(rest[0])
    for key in ("dims", "dim0", "dim1", "source", "destination"):
        if key in call.kwargs:
            value = call.kwargs[key]
            rest.extend(value if isinstance(value, (list, tuple)) else [value])
    return rest


def _permute_rule(op: str):
    def rule(call: Call) -> Op:
        perm = permutation(op, _int_args(call), _src_ndim(call))
        if perm is None:
            return Op("unknown", list(call.values()), {"op": call.op})
        return Op("permute", list(call.values()[:1]), {"perm": perm})

    return rule


register_op("aten.permute")(_permute_rule("permute"))
register_op("aten.transpose", "aten.swapaxes", "aten.swapdims")(_permute_rule("transpose"))
register_op("aten.movedim", "aten.moveaxis")(_permute_rule("movedim"))
register_op("aten.t")(_permute_rule("t"))


@register_op("aten.unsqueeze", "aten.squeeze", "aten.unflatten", "aten.view_as", "aten.reshape_as")
def _view(call: Call) -> Op:
    """Views that only add, drop, split or merge dimensions: read from the two shapes."""
    return Op("reshape", list(call.values()[:1]))


@register_op("aten.expand", "aten.expand_as", "aten.broadcast_to")
def _expand(call: Call) -> Op:
    return Op("expand", list(call.values()[:1]))


@register_op("aten.unbind")
def _unbind(call: Call) -> Op:
    return Op("split", list(call.values()[:1]), {"dim": call.arg(1, "dim", 0), "unbind": True})


@register_op("aten.select")
def _select(call: Call) -> Op:
    dim, index = call.arg(1, "dim"), call.arg(2, "index")
    if not isinstance(dim, int) or not isinstance(index, int):
        return Op("unknown", list(call.values()), {"op": call.op})
    ndim = _src_ndim(call)
    items: list[tuple[Any, ...]] = [("slice", None, None, None)] * (dim % max(ndim, 1))
    return Op("index", list(call.values()[:1]), {"items": [*items, ("int", index)]})


def index_items(index: Any, ndim: int) -> list[tuple[Any, ...]] | None:
    """``tensor[index]`` as one item per indexed dimension (``None``: tensor indexing).

    Items: ``("slice", start, stop, step)``, ``("int", i)``, ``("none",)`` (a new dimension).
    An ``Ellipsis`` expands to full slices.
    """
    items = list(index) if isinstance(index, tuple) else [index]
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    out: list[tuple[Any, ...]] = []
    for item in items:
        if item is Ellipsis:
            out.extend([("slice", None, None, None)] * (ndim - used))
        elif item is None:
            out.append(("none",))
        elif isinstance(item, bool):
            return None
        elif isinstance(item, int):
            out.append(("int", item))
        elif isinstance(item, slice) and all(
            v is None or isinstance(v, int) for v in (item.start, item.stop, item.step)
        ):
            out.append(("slice", item.start, item.stop, item.step))
        else:
            return None
    return out


def _softmax_rule(call: Call, dim: Any) -> Op:
    if not isinstance(dim, int):
        return Op("unknown", list(call.values()), {"op": call.op})
    return Op("pointwise", list(call.values()[:1]), {"zero_preserving": False, "dim": dim})


@register_op("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax")
@register_op("aten._safe_softmax")
def _softmax(call: Call) -> Op:
    """Softmax along ``dim``: channel-wise unless ``dim`` is a channel dimension."""
    return _softmax_rule(call, call.arg(1, "dim"))


@register_op(nn.Softmax, nn.LogSoftmax)
def _softmax_module(call: Call) -> Op:
    module = call.module
    assert isinstance(module, (nn.Softmax, nn.LogSoftmax))
    return _softmax_rule(call, module.dim)


@register_op("aten.roll")
def _roll(call: Call) -> Op:
    """``torch.roll(x, shifts, dims)``: channel-wise unless it rolls the channel dimension."""
    dims = call.arg(2, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or not all(isinstance(d, int) for d in dims):
        return Op("unknown", list(call.values()), {"op": call.op})
    ndim = _src_ndim(call)
    attrs = {"zero_preserving": True, "dims": [_norm(d, ndim) for d in dims]}
    return Op("pointwise", list(call.values()[:1]), attrs)
