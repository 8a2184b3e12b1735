"""torch.fx backend: symbolic trace + ShapeProp, normalised into the graph IR."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.graph import ops
from lightning_prune.graph.exclude import matches
from lightning_prune.graph.ir import Graph, OpNode, Shape


class _Tracer(fx.Tracer):
    """Keeps ``torch.nn`` layers, lightning_prune gates and excluded modules as leaves."""

    def __init__(self, exclude: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.exclude = exclude

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name and matches(module_qualified_name, self.exclude):
            return True
        from lightning_prune.gates.base import ChannelGate
        from lightning_prune.surgery.gating import SiteGate

        if isinstance(m, (ChannelGate, SiteGate)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _tensor_shape(meta: Any) -> Shape:
    return tuple(int(d) for d in meta.shape)


def _shape_of(meta: Any) -> Shape | list[Shape | None] | None:
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return _tensor_shape(meta)
    if isinstance(meta, (tuple, list)):
        return [_tensor_shape(m) if hasattr(m, "shape") else None for m in meta]
    return None


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0]
    return ""


def _where(node: fx.Node, op: str) -> str:
    path = _module_path(node)
    return f"`{op}` in `{path}`" if path else f"`{op}`"


def _op_name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("_operator") or mod == "operator":
        return f"operator.{name}"
    return f"torch.{name}" if mod.startswith("torch") else name


def _arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)


def _dims(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _module_node(node: fx.Node, module: nn.Module) -> tuple[str, dict[str, Any]]:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv", {
            "transposed": bool(module.transposed),
            "groups": int(module.groups),
            "in_channels": int(module.in_channels),
            "out_channels": int(module.out_channels),
            "bias": module.bias is not None,
        }
    if isinstance(module, nn.Linear):
        return "linear", {"in_channels": module.in_features, "out_channels": module.out_features}
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "norm", {"norm": "batch", "num_groups": None}
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return "norm", {"norm": "instance", "num_groups": None}
    if isinstance(module, nn.GroupNorm):
        return "norm", {"norm": "group", "num_groups": int(module.num_groups)}
    if isinstance(module, nn.Flatten):
        return "reshape", {}
    zero = ops.pointwise_module(module)
    if zero is not None:
        return "pointwise", {"zero_preserving": zero}
    return "unknown", {"op": type(module).__name__}


def _index_kind(index: Any, ndim: int) -> tuple[str, dict[str, Any]]:
    """Classify ``tensor[index]``: channel slice, pass-through, or unknown."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in items) or len(items) > ndim:
        return "unknown", {"op": "tensor indexing"}
    full = slice(None)
    if items and items[0] != full:
        return "unknown", {"op": "indexing along the batch dimension"}
    if len(items) < 2 or items[1] == full:
        return "pointwise", {"zero_preserving": True}
    sl = items[1]
    return "slice", {"dim": 1, "start": sl.start, "stop": sl.stop, "step": sl.step}


def _convert(gm: fx.GraphModule, node: fx.Node, shapes: dict[str, Any]) -> OpNode:
    shape = shapes.get(node.name)
    name = node.name
    tensor_inputs: list[str | None] = [
        a.name for a in node.all_input_nodes if isinstance(shapes.get(a.name), (tuple, list))
    ]
    if node.op == "placeholder":
        return OpNode(name, "input", shape=shape, where=f"input `{node.target}`")
    if node.op == "output":
        return OpNode(name, "output", inputs=tensor_inputs, where="model output")
    if node.op == "get_attr":
        return OpNode(name, "ignore", shape=shape, where=f"attribute `{node.target}`")
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        kind, attrs = _module_node(node, module)
        return OpNode(
            name,
            kind,
            tensor_inputs[:1],
            attrs,
            shape,
            module=str(node.target),
            where=f"{type(module).__name__} `{node.target}`",
        )
    method = node.op == "call_method"
    target = node.target
    op = f"Tensor.{target}" if method else _op_name(target)
    where = _where(node, op)
    if shape is None:
        return OpNode(name, "ignore", where=where)
    if method and ops.is_ignored_method(str(target)):
        return OpNode(name, "ignore", where=where)
    binary = ops.binary_op(target, method)
    if binary is not None:
        a, b = _arg(node, 0, "input"), _arg(node, 1, "other")
        ins = [x.name if isinstance(x, fx.Node) and x.name in shapes else None for x in (a, b)]
        scalar = b if not isinstance(b, fx.Node) else a if not isinstance(a, fx.Node) else None
        attrs = {"op": binary, "scalar": scalar}
        return OpNode(name, "binary", ins, attrs, shape, where=where)
    zero = ops.pointwise_method(str(target)) if method else ops.pointwise_function(target)
    if zero is not None:
        return OpNode(
            name, "pointwise", tensor_inputs[:1], {"zero_preserving": zero}, shape, where=where
        )
    if not method and ops.is_cat(target):
        tensors = _arg(node, 0, "tensors")
        dim = _arg(node, 1, "dim", 0)
        ins = [t.name for t in tensors]
        return OpNode(name, "cat", ins, {"dim": dim}, shape, where=where)
    if ops.is_reshape(target, method):
        return OpNode(name, "reshape", tensor_inputs[:1], {}, shape, where=where)
    if ops.is_reduce(target, method):
        dims = _dims(_arg(node, 1, "dim"))
        return OpNode(name, "reduce", tensor_inputs[:1], {"dims": dims}, shape, where=where)
    split = ops.split_op(target, method)
    if split is not None:
        dim = _arg(node, 2, "dim", 0)
        return OpNode(name, "split", tensor_inputs[:1], {"dim": dim}, shape, where=where)
    if not method and target is operator.getitem:
        src, index = node.args[0], node.args[1]
        src_name = src.name if isinstance(src, fx.Node) else None
        src_shape = shapes.get(src_name) if src_name is not None else None
        if isinstance(src_shape, list):
            return OpNode(name, "getitem", [src_name], {"index": index}, shape, where=where)
        if isinstance(src_shape, tuple):
            kind, attrs = _index_kind(index, len(src_shape))
            attrs.setdefault("op", "tensor indexing")
            return OpNode(name, kind, [src_name], attrs, shape, where=where)
        return OpNode(name, "ignore", where=where)
    if not method and target is torch.nn.functional.pad:
        pad = _arg(node, 1, "pad")
        first = tensor_inputs[0] if tensor_inputs else None
        ndim = len(shapes[first]) if first is not None else 0
        value = _arg(node, 3, "value", None)
        if isinstance(pad, Sequence) and len(pad) <= 2 * max(ndim - 2, 0):
            zero = not value
            return OpNode(
                name, "pointwise", tensor_inputs[:1], {"zero_preserving": zero}, shape, where=where
            )
    return OpNode(name, "unknown", tensor_inputs, {"op": op}, shape, where=where)


def trace_fx(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...] = ()
) -> Graph:
    """Trace ``model`` with torch.fx and propagate shapes from ``example_inputs``.

    Modules matching ``exclude`` are kept as opaque leaves. The caller sets the model's mode
    and restores it; this function does not mutate the model.
    """
    tracer = _Tracer(exclude)
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ShapeProp(gm).propagate(*example_inputs)
    shapes = {n.name: _shape_of(n.meta.get("tensor_meta")) for n in gm.graph.nodes}
    nodes = [_convert(gm, n, shapes) for n in gm.graph.nodes]
    for node, fx_node in zip(nodes, gm.graph.nodes):
        node.scope = str(fx_node.target) if fx_node.op == "call_module" else _module_path(fx_node)
    return Graph(nodes=nodes, backend="fx", total_flops=int(counter.get_total_flops()))
