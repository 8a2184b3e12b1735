"""torch.export front-end: for models torch.fx cannot trace (shape-dependent Python control flow).

The exported ATen graph is read through the same operation table as the fx front-end. The ops
a leaf module issued (:func:`~.frontend.is_leaf`: a ``torch.nn`` layer, an excluded module, a
registered leaf) are merged back into one call of that module, so both front-ends see the
same operations; other ops are looked up by ATen name, and conv / linear / norm ops outside
leaves are mapped to their module through their weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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
from lightning_prune.graph.ops import OPS, Call, Op, Rule, aten_name


def _stack(node: fx.Node) -> list[tuple[str, str]]:
    """``(call id, module path)`` of the module calls a node was issued in, outermost first."""
    stack = node.meta.get("nn_module_stack") or {}
    return [(key, value[0]) for key, value in stack.items()]


def _op_name(target: Any) -> str:
    name = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    return aten_name(str(name))


@dataclass
class _LeafCall:
    """The ops of one call of a leaf module, merged into one operation."""

    path: str
    nodes: list[fx.Node] = field(default_factory=list)


class _Converter:
    """Normalises the nodes of one exported program into the graph IR."""

    def __init__(
        self, ep: torch.export.ExportedProgram, model: nn.Module, exclude: tuple[str, ...]
    ) -> None:
        self.model = model
        self.exclude = exclude
        sig = ep.graph_signature
        self.constants: dict[str, str] = {
            **sig.inputs_to_parameters,
            **sig.inputs_to_buffers,
            **sig.inputs_to_lifted_tensor_constants,
        }
        self.user_inputs = set(sig.user_inputs)
        self.tensors = own_tensors(model)
        self.nodes = list(ep.graph.nodes)
        self.shapes = {n.name: shape_of(n.meta.get("val")) for n in self.nodes}
        self.leaf_of: dict[str, _LeafCall] = {}
        self._group_leaf_calls()

    # ---------------------------------------------------------------------- leaf calls
    def _leaf_call_id(self, node: fx.Node) -> tuple[str, str] | None:
        for key, path in _stack(node):
            if not path:
                continue
            try:
                module = self.model.get_submodule(path)
            except AttributeError:
                return None
            if is_leaf(module, path, self.exclude):
                return key, path
        return None

    def _group_leaf_calls(self) -> None:
        calls: dict[str, _LeafCall] = {}
        for node in self.nodes:
            if node.op != "call_function":
                continue
            found = self._leaf_call_id(node)
            if found is None:
                continue
            key, path = found
            call = calls.setdefault(key, _LeafCall(path))
            call.nodes.append(node)
            self.leaf_of[node.name] = call
        position = {n.name: i for i, n in enumerate(self.nodes)}
        for call in calls.values():  # merge only calls whose results are used after them
            last = position[call.nodes[-1].name]
            inside = {n.name for n in call.nodes}
            if any(
                position[user.name] <= last
                for n in call.nodes
                for user in n.users
                if user.name not in inside
            ):
                for n in call.nodes:
                    del self.leaf_of[n.name]

    def _leaf_nodes(self, node: fx.Node) -> list[OpNode]:
        """The merged call, emitted at its last op: one node per result used outside."""
        leaf = self.leaf_of[node.name]
        if node is not leaf.nodes[-1]:
            return []
        inside = {n.name for n in leaf.nodes}
        inputs = [a for n in leaf.nodes for a in n.all_input_nodes if a.name not in inside]
        args = tuple(dict.fromkeys(inputs))
        results = [n for n in leaf.nodes if any(u.name not in inside for u in n.users)]
        module = self.model.get_submodule(leaf.path)
        name = type(module).__name__
        rule: Rule | None = OPS.module_rule(module) if len(results) == 1 else None

        def where(op: Op) -> str:
            return f"{name} `{leaf.path}`"

        return [
            op_node(r.name, self._call(r, name, args, {}, leaf.path), rule, where, leaf.path)
            for r in results
        ]

    # --------------------------------------------------------------------- conversion
    def _call(
        self,
        node: fx.Node,
        op: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        path: str | None = None,
    ) -> Call:
        shape = self.shapes.get(node.name)
        scope = path if path is not None else (_stack(node)[-1][1] if _stack(node) else "")
        return Call(op, args, kwargs, shape, self.shapes, self.constants, self.model, path, scope)

    def convert(self, node: fx.Node) -> list[OpNode]:
        name, shape = node.name, self.shapes.get(node.name)
        if node.op == "placeholder":
            if name in self.user_inputs:
                return [OpNode(name, "input", shape=shape, where=f"input `{name}`")]
            qualified = self.constants.get(name, name)
            label = f"parameter `{qualified}`"
            return [constant_node(name, qualified, shape, self.tensors, label)]
        if node.op == "output":
            call = self._call(node, "output", tuple(node.args), {})
            return [OpNode(name, "output", inputs=list(call.values()), where="model output")]
        if node.op != "call_function":
            return [OpNode(name, "ignore", where=name)]
        if name in self.leaf_of:
            return self._leaf_nodes(node)
        path = _stack(node)[-1][1] if _stack(node) else ""
        target = node.target
        if isinstance(target, torch._ops.OpOverload):
            rule = OPS.aten_rule(_op_name(target))
            display = f"aten.{_op_name(target)}"
        else:
            rule = OPS.function_rule(target)
            display = getattr(target, "__name__", str(target))
            if getattr(target, "__module__", None) in ("_operator", "operator"):
                display = f"operator.{display}"
        call = self._call(node, display, tuple(node.args), dict(node.kwargs))

        def describe(op: Op) -> str:
            if op.module is not None:
                return f"{type(self.model.get_submodule(op.module)).__name__} `{op.module}`"
            return f"`{display}` in `{path}`" if path else f"`{display}`"

        return [op_node(name, call, rule, describe, path, _stack(node)[-1][0] if path else "")]


def capture_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    """Export ``model`` (non-strict).

    Raises:
        CaptureError: when torch.export cannot capture the model.
    """
    try:
        return torch.export.export(model, example_inputs, strict=False)
    except Exception as err:
        raise CaptureError("torch.export", err) from err


def trace_export(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...] = ()
) -> Graph:
    """Capture ``model`` with ``torch.export`` and normalise its ATen graph.

    Raises:
        CaptureError: when torch.export cannot capture the model.
    """
    ep = capture_export(model, example_inputs)
    converter = _Converter(ep, model, exclude)
    nodes = [op for n in converter.nodes for op in converter.convert(n)]
    annotate_constants(nodes, converter.nodes, converter.constants, converter.shapes)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*example_inputs)
    return Graph(nodes=nodes, backend="export", total_flops=int(counter.get_total_flops()))
