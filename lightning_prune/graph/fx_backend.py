"""torch.fx front-end: symbolic trace + ShapeProp, each node read through the operation table."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.graph.channel_args import reset_all, rewrite_call
from lightning_prune.graph.frontend import (
    CaptureError,
    annotate_constants,
    constant_node,
    is_leaf,
    op_node,
    own_tensors,
    shape_of,
)
from lightning_prune.graph.ir import Graph, OpNode
from lightning_prune.graph.ops import OPS, Call, Op


class _OwnError(Exception):
    """An error in the tracer's own hooks: an engine bug, never a reason to fall back."""

    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err


class _Tracer(fx.Tracer):
    """Keeps the modules :func:`~.frontend.is_leaf` names as single operations."""

    def __init__(self, exclude: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.exclude = exclude

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        try:
            return is_leaf(m, module_qualified_name, self.exclude)
        except Exception as err:
            raise _OwnError(err) from err

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        if isinstance(root, nn.Module):
            reset_all(root)
        return super().trace(root, concrete_args)

    def create_node(
        self,
        kind: str,
        target: Any,
        args: Any,
        kwargs: Any,
        name: str | None = None,
        type_expr: Any = None,
    ) -> fx.Node:
        """Record a call as a collapsed model makes it (split sizes, slice bounds rewritten)."""
        if kind in ("call_function", "call_method"):
            path = list(self.module_stack.values())[-1][0] if self.module_stack else ""
            name = target if isinstance(target, str) else getattr(target, "__name__", "")
            try:
                args, kwargs = rewrite_call(self.root.get_submodule(path), name, args, kwargs)
            except Exception as err:
                raise _OwnError(err) from err
        return super().create_node(kind, target, args, kwargs, name, type_expr)


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0]
    return ""


def _module_call(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return list(stack)[-1] if stack else ""


def _op_name(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("_operator") or mod == "operator":
        return f"operator.{name}"
    return f"torch.{name}" if mod.startswith("torch") else name


class _Converter:
    """Normalises the nodes of one traced ``GraphModule`` into the graph IR."""

    def __init__(self, gm: fx.GraphModule, model: nn.Module) -> None:
        self.gm = gm
        self.model = model
        self.shapes = {n.name: shape_of(n.meta.get("tensor_meta")) for n in gm.graph.nodes}
        self.constants = {n.name: str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        self.tensors = own_tensors(model)

    def _call(self, node: fx.Node, op: str, path: str | None = None) -> Call:
        return Call(
            op,
            tuple(node.args),
            dict(node.kwargs),
            self.shapes.get(node.name),
            self.shapes,
            self.constants,
            self.model,
            path,
            path if path is not None else _module_path(node),
        )

    def _where(self, node: fx.Node, op: str) -> Any:
        def where(result: Op) -> str:
            if result.module is not None:
                module = self.model.get_submodule(result.module)
                return f"{type(module).__name__} `{result.module}`"
            if node.op == "call_module":
                return f"{op} `{node.target}`"
            path = _module_path(node)
            return f"`{op}` in `{path}`" if path else f"`{op}`"

        return where

    def convert(self, node: fx.Node) -> OpNode:
        name, shape = node.name, self.shapes.get(node.name)
        if node.op == "placeholder":
            return OpNode(name, "input", shape=shape, where=f"input `{node.target}`")
        if node.op == "output":
            call = self._call(node, "output")
            return OpNode(name, "output", inputs=list(call.values()), where="model output")
        if node.op == "get_attr":
            target = str(node.target)
            return constant_node(name, target, shape, self.tensors, f"attribute `{target}`")
        if node.op == "call_module":
            path = str(node.target)
            module = self.model.get_submodule(path)
            call = self._call(node, type(module).__name__, path)
            rule = OPS.module_rule(module)
            return op_node(name, call, rule, self._where(node, call.op), path, _module_call(node))
        if node.op == "call_method":
            call = self._call(node, f"Tensor.{node.target}")
            rule = OPS.method_rule(str(node.target))
        else:
            call = self._call(node, _op_name(node.target))
            rule = OPS.function_rule(node.target)
        where = self._where(node, call.op)
        return op_node(name, call, rule, where, _module_path(node), _module_call(node))


def capture_fx(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...] = ()
) -> tuple[fx.GraphModule, int]:
    """Trace ``model`` symbolically and propagate shapes; FLOPs of that forward pass.

    Raises:
        CaptureError: when torch.fx cannot trace the model or the traced graph cannot run.
    """
    tracer = _Tracer(exclude)
    try:
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph)
    except _OwnError as own:
        raise own.err from None  # a bug of the engine: it propagates as it is
    except Exception as err:
        raise CaptureError("torch.fx", err) from err
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as err:
        raise CaptureError("ShapeProp", err) from err
    return gm, int(counter.get_total_flops())


def trace_fx(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...] = ()
) -> Graph:
    """Trace ``model`` with torch.fx and normalise its graph through the operation table.

    Modules matching ``exclude`` are kept as opaque leaves. The caller sets the model's mode
    and restores it; this function does not mutate the model.

    Raises:
        CaptureError: when torch.fx cannot capture the model (see :func:`capture_fx`).
    """
    gm, flops = capture_fx(model, example_inputs, exclude)
    converter = _Converter(gm, model)
    nodes = [converter.convert(n) for n in gm.graph.nodes]
    annotate_constants(nodes, gm.graph.nodes, converter.constants, converter.shapes)
    return Graph(nodes=nodes, backend="fx", total_flops=flops)
