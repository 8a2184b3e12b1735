"""torch.export backend: for models torch.fx cannot trace (shape-dependent Python control flow).

The exported ATen graph is normalised into the same IR as the fx backend; conv / linear / norm
calls are mapped back to their ``nn.Module`` through their weight parameters.
"""

from __future__ import annotations

import operator
from typing import Any, cast

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.graph import ops
from lightning_prune.graph.fx_backend import _module_node, _shape_of
from lightning_prune.graph.ir import Graph, OpNode

_CONV = {
    "conv1d",
    "conv2d",
    "conv3d",
    "convolution",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
}
#: norm op -> (index of the weight argument, index of the group-count argument or None)
_NORM = {
    "batch_norm": (1, None),
    "_native_batch_norm_legit_no_training": (1, None),
    "_native_batch_norm_legit": (1, None),
    "native_batch_norm": (1, None),
    "instance_norm": (1, None),
    "group_norm": (2, 1),
    "native_group_norm": (1, 6),
}
_SPLIT = {"split", "split_with_sizes", "chunk", "unbind"}


def _opname(target: Any) -> str:
    name = cast(str, getattr(target, "_opname", None) or getattr(target, "__name__", str(target)))
    # in-place variants (relu_, add_, feature_dropout_) behave like their functional forms
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def _stack_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def _arg(node: fx.Node, i: int, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else default


def _names(nodes: Any) -> list[str | None]:
    """Names of a sequence of graph nodes (the tensor operands of ``cat`` / ``stack``)."""
    return [t.name for t in nodes]


class _Converter:
    def __init__(self, ep: torch.export.ExportedProgram, model: nn.Module) -> None:
        self.model = model
        sig = ep.graph_signature
        self.params = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
        self.user_inputs = set(sig.user_inputs)
        self.shapes: dict[str, Any] = {}

    def module_of(self, node: fx.Node, weight: Any) -> str | None:
        if isinstance(weight, fx.Node) and weight.name in self.params:
            return self.params[weight.name].rsplit(".", 1)[0]
        return _stack_path(node) or None

    def tensor_inputs(self, node: fx.Node) -> list[str | None]:
        return [
            a.name
            for a in node.all_input_nodes
            if isinstance(self.shapes.get(a.name), (tuple, list)) and a.name not in self.params
        ]

    def convert(self, node: fx.Node) -> OpNode:
        name = node.name
        shape = _shape_of(node.meta.get("val"))
        self.shapes[name] = shape
        if node.op == "placeholder":
            if name in self.user_inputs:
                return OpNode(name, "input", shape=shape, where=f"input `{name}`")
            return OpNode(name, "ignore", where=f"parameter `{self.params.get(name, name)}`")
        if node.op == "output":
            return OpNode(name, "output", inputs=self.tensor_inputs(node), where="model output")
        if node.op != "call_function":
            return OpNode(name, "ignore", where=name)
        target = node.target
        op = _opname(target)
        path = _stack_path(node)
        where = f"`aten.{op}` in `{path}`" if path else f"`aten.{op}`"
        ins = self.tensor_inputs(node)
        if shape is None:
            return OpNode(name, "ignore", where=where)
        if target is operator.getitem:
            src = cast(fx.Node, node.args[0])
            return OpNode(name, "getitem", [src.name], {"index": node.args[1]}, shape, where=where)
        if op in _CONV or op == "linear":
            module_path = self.module_of(node, _arg(node, 1))
            if module_path is None:
                return OpNode(name, "unknown", ins, {"op": op}, shape, where=where)
            module = self.model.get_submodule(module_path)
            kind, attrs = _module_node(node, module)
            return OpNode(
                name,
                kind,
                ins[:1],
                attrs,
                shape,
                module=module_path,
                where=f"{type(module).__name__} `{module_path}`",
            )
        if op in _NORM:
            w_idx, _ = _NORM[op]
            module_path = self.module_of(node, _arg(node, w_idx))
            norm_module = self.model.get_submodule(module_path) if module_path else None
            if norm_module is None or _module_node(node, norm_module)[0] != "norm":
                return OpNode(name, "unknown", ins, {"op": op}, shape, where=where)
            _, attrs = _module_node(node, norm_module)
            return OpNode(
                name,
                "norm",
                ins[:1],
                attrs,
                shape,
                module=module_path,
                where=f"{type(norm_module).__name__} `{module_path}`",
            )
        if op in ops.ATEN_BINARY:
            a, b = _arg(node, 0), _arg(node, 1)
            names = [x.name if isinstance(x, fx.Node) else None for x in (a, b)]
            scalar = b if not isinstance(b, fx.Node) else a if not isinstance(a, fx.Node) else None
            return OpNode(
                name,
                "binary",
                names,
                {"op": ops.ATEN_BINARY[op], "scalar": scalar},
                shape,
                where=where,
            )
        if op in ops.ATEN_ZERO_PRESERVING or op in ops.ATEN_TAINTING:
            kind = "pointwise"
            attrs = {"zero_preserving": op in ops.ATEN_ZERO_PRESERVING}
            return OpNode(name, kind, ins[:1], attrs, shape, where=where)
        if op in ops.ATEN_TUPLE_POINTWISE:
            return OpNode(name, "split", ins[:1], {"dim": -1, "same": True}, shape, where=where)
        if op == "cat":
            return OpNode(
                name,
                "cat",
                _names(node.args[0]),
                {"dim": _arg(node, 1, node.kwargs.get("dim", 0))},
                shape,
                where=where,
            )
        if op == "stack":
            return OpNode(
                name,
                "stack",
                _names(node.args[0]),
                {"dim": _arg(node, 1, node.kwargs.get("dim", 0))},
                shape,
                where=where,
            )
        if op in ops.ATEN_RESHAPE:
            return OpNode(name, "reshape", ins[:1], {}, shape, where=where)
        if op in ops.ATEN_REDUCE:
            dims = _arg(node, 1)
            dims = [dims] if isinstance(dims, int) else list(dims) if dims is not None else None
            return OpNode(name, "reduce", ins[:1], {"dims": dims}, shape, where=where)
        if op == "slice":
            dim = _arg(node, 1, 0)
            attrs = {
                "dim": dim,
                "start": _arg(node, 2),
                "stop": _arg(node, 3),
                "step": _arg(node, 4, 1),
            }
            return OpNode(name, "slice", ins[:1], attrs, shape, where=where)
        if op in _SPLIT:
            return OpNode(
                name,
                "split",
                ins[:1],
                {"dim": _arg(node, 2, node.kwargs.get("dim", 0))},
                shape,
                where=where,
            )
        if op in ops.ATEN_IGNORED or not ins:
            return OpNode(name, "ignore", shape=shape, where=where)
        if torch.Tag.pointwise in getattr(target, "tags", ()) and len(ins) == 1:
            return OpNode(name, "pointwise", ins, {"zero_preserving": False}, shape, where=where)
        return OpNode(name, "unknown", ins, {"op": op}, shape, where=where)


def trace_export(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Graph:
    """Capture ``model`` with ``torch.export`` (non-strict) and normalise its ATen graph."""
    ep = torch.export.export(model, example_inputs, strict=False)
    conv = _Converter(ep, model)
    nodes = [conv.convert(n) for n in ep.graph.nodes]
    for node, ex_node in zip(nodes, ep.graph.nodes):
        node.scope = _stack_path(ex_node)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*example_inputs)
    return Graph(nodes=nodes, backend="export", total_flops=int(counter.get_total_flops()))
