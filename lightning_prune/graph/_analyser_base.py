"""State and helpers shared by the channel analyser's per-op handlers.

:class:`_AnalyserBase` holds the union-find, the channel map (:class:`~.channels._Val`) of
every graph value and the module channel maps; its helpers create fresh elements, pin the
inputs of operations the analysis does not understand and merge the channels of modules called
more than once.
"""

from __future__ import annotations

from typing import Any

from lightning_prune.graph.channels import ModuleChannels, _UnionFind, _Val
from lightning_prune.graph.exclude import matches
from lightning_prune.graph.ir import Graph, OpNode


class _AnalyserBase:
    """Analysis state (union-find, value channel maps, module maps) and shared helpers."""

    def __init__(self, graph: Graph, exclude: tuple[str, ...]) -> None:
        self.graph = graph
        self.exclude = exclude
        self.uf = _UnionFind()
        self.vals: dict[str, _Val | list[_Val | None] | None] = {}
        self.modules: dict[str, ModuleChannels] = {}
        self.users: dict[str, list[OpNode]] = {}
        self.shapes = {n.name: n.shape for n in graph.nodes}
        self.by_name = {n.name: n for n in graph.nodes}
        self.stacked: set[str] = set()  # values whose channel axis moved to 2 by stack(dim=0)
        #: reshapes that split channels into several dimensions (or merged them back), with
        #: the element ids along those dimensions: collapse may shrink one of them only
        self.splits: list[tuple[OpNode, Any]] = []
        for node in graph.nodes:
            for i in node.inputs:
                if i is not None:
                    self.users.setdefault(i, []).append(node)

    def _val(self, name: str | None) -> _Val | None:
        if name is None:
            return None
        v = self.vals.get(name)
        return v if isinstance(v, _Val) else None

    @staticmethod
    def _first(node: OpNode) -> str | None:
        """The node's first input (its data operand), if any."""
        return node.inputs[0] if node.inputs else None

    def _fresh(self, shape: object, reason: str | None, axis: int = 1) -> _Val | None:
        if not isinstance(shape, tuple) or len(shape) < 2:
            return None
        axis = axis % len(shape)
        elems = self.uf.new(shape[axis])
        if reason:
            self.uf.pin(elems, reason)
        return _Val(elems, [None] * shape[axis], (axis,))

    def _pin_inputs(self, node: OpNode, reason: str) -> None:
        for name in node.inputs:
            v = self.vals.get(name) if name else None
            for val in v if isinstance(v, list) else [v]:
                if isinstance(val, _Val):
                    self.uf.pin(val.elems, reason)

    def _unknown(self, node: OpNode, reason: str | None = None) -> None:
        reason = reason or node.where
        self._pin_inputs(node, reason)
        if isinstance(node.shape, list):
            self.vals[node.name] = [self._fresh(s, reason) for s in node.shape]
        else:
            self.vals[node.name] = self._fresh(node.shape, reason, self._likely_axis(node))

    def _likely_axis(self, node: OpNode) -> int:
        """Channel dimension for a fresh output: its input's when the layout is kept, else 1."""
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        kept = isinstance(src, tuple) and isinstance(node.shape, tuple)
        if v is not None and v.axis is not None and kept and len(node.shape) == len(src):  # type: ignore[arg-type]
            return v.axis
        return 1

    def _excluded(self, path: str) -> bool:
        return matches(path, self.exclude)

    def _register(self, path: str, role: str, type_name: str) -> ModuleChannels:
        if path not in self.modules:
            self.modules[path] = ModuleChannels(path, role, type_name)
        return self.modules[path]

    def _merge(self, old: list[int] | None, new: list[int]) -> list[int]:
        if old is None:
            return list(new)
        if len(old) != len(new):  # pragma: no cover - shapes are fixed per module
            raise RuntimeError("inconsistent channel counts across calls of one module")
        for a, b in zip(old, new):
            self.uf.union(a, b)
        return old

    def graph_shape(self, name: str | None) -> object:
        return self.shapes.get(name) if name else None

    def _op_ignore(self, node: OpNode) -> None:
        self.vals[node.name] = None
