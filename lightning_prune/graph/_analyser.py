"""The channel analyser: walks the graph and dispatches each node to its ``_op_<kind>`` handler.

:class:`_Analyser` adds the handlers of graph inputs and outputs, unknown and pointwise
operations, and the weight-carrying modules (conv, linear, norm) to the tensor-operation
handlers it inherits (:mod:`._tensor_ops`, :mod:`._split_ops`, :mod:`._param_ops`).
"""

from __future__ import annotations

from lightning_prune.graph._param_ops import _ParamOps
from lightning_prune.graph.channels import _EXCLUDED, _OUTPUT, _norm_dim, _Val
from lightning_prune.graph.ir import OpNode

#: Kinds whose exclusion the handler applies itself (the rest are opaque when excluded).
_LAYER_KINDS = ("input", "output", "ignore", "conv", "linear", "norm", "layer_norm", "mha")


class _Analyser(_ParamOps):
    """The full analyser: graph walk plus input/output/unknown/pointwise/module handlers."""

    def run(self) -> None:
        for node in self.graph.nodes:
            if node.kind != "reduce" and any(i in self.stacked for i in node.inputs if i):
                self._unknown(node)
                continue
            opaque = node.kind not in _LAYER_KINDS
            if opaque and node.scope and self._excluded(node.scope):
                self._unknown(node, _EXCLUDED)
                continue
            handler = getattr(self, f"_op_{node.kind}", None)
            if handler is None:  # pragma: no cover - every kind has a handler
                raise RuntimeError(f"no handler for {node.kind}")
            handler(node)
        self._resolve_splits()
        # modules whose output goes anywhere but a norm need their own gate site
        for node in self.graph.nodes:
            if node.kind in ("conv", "linear", "source") and node.module in self.modules:
                users = self.users.get(node.name, [])
                if len(users) != 1 or not self._norm_site(users[0]):
                    self.modules[node.module].feeds_norm_only = False

    def _norm_site(self, node: OpNode) -> bool:
        """Whether ``node`` is a norm that gates its output (so its input needs no gate)."""
        if node.kind == "layer_norm":
            return node.module in self.modules and self.modules[node.module].role == "norm"
        return node.kind == "norm"

    def _op_input(self, node: OpNode) -> None:
        self.vals[node.name] = self._fresh(node.shape, "model input")

    def _op_output(self, node: OpNode) -> None:
        self._pin_inputs(node, _OUTPUT)

    def _op_unknown(self, node: OpNode) -> None:
        if not any(self._val(i) or isinstance(self.vals.get(i or ""), list) for i in node.inputs):
            self.vals[node.name] = self._fresh(node.shape, None)
            return
        self._unknown(node)

    def _op_pointwise(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        shape, src = node.shape, self.graph_shape(self._first(node))
        if v is None or not isinstance(shape, tuple) or len(shape) < 2:
            self._unknown(node) if v is not None else self._op_ignore(node)
            return
        if not isinstance(src, tuple) or len(src) != len(shape) or not self._spans(v, shape):
            self._unknown(node)
            return
        touched = node.attrs.get("dims")  # dims a padding / roll changes (None: any but C)
        if touched is not None:
            if any(_norm_dim(int(d), len(shape)) in v.axes for d in touched):
                self._unknown(node)
                return
        elif src != shape and v.axes != (1,):  # pools, resampling: NCHW layers
            self._unknown(node)
            return
        dim = node.attrs.get("dim")  # softmax: mixes the values along ``dim``
        if dim is not None and _norm_dim(int(dim), len(shape)) in v.axes:
            self._unknown(node)
            return
        taint: list[str | None] = (
            v.taint if node.attrs.get("zero_preserving", True) else [node.where] * len(v.elems)
        )
        self.vals[node.name] = _Val(v.elems, taint, v.axes, v.dims)

    def _op_conv(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        path = node.module or node.name
        a = node.attrs
        if v is None:
            return self._unknown(node)
        if len(v.elems) != a["in_channels"] or v.axes != (1,):
            # channels the analysis does not follow (moved by a layout op it lost track of):
            # they stay, the layer's outputs can still be gated
            self.uf.pin(v.elems, node.where)
            v = self._fresh(self.graph_shape(self._first(node)), node.where)
            if v is None or len(v.elems) != a["in_channels"]:
                return self._unknown(node)
        if a.get("fixed_inputs"):  # a conv whose inputs cannot be sliced
            self.uf.pin(v.elems, a["fixed_inputs"])
        for extra in node.inputs[1:]:  # other operands (a conditional conv's routing weights)
            if (w := self._val(extra)) is not None:
                self.uf.pin(w.elems, f"{node.where} (not its data input)")
        excluded = self._excluded(path)
        groups = a.get("groups", 1)
        cin, cout = a["in_channels"], a["out_channels"]
        if groups > 1 and not excluded and cin % groups == 0 and cout % groups == 0:
            return self._grouped(node, v, path, groups)
        m = self._register(path, "conv", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(cout)
        if groups > 1 or excluded:
            reason = _EXCLUDED if excluded else f"grouped convolution (groups={groups}) `{path}`"
            self.uf.pin(v.elems, reason)
            self.uf.pin(m.outputs, reason)
        m.inputs = self._merge(m.inputs, v.elems)
        self._consumer_taint(node, v)
        self.vals[node.name] = _Val(m.outputs, [None] * len(m.outputs))
        return None

    def _grouped(self, node: OpNode, v: _Val, path: str, groups: int) -> None:
        """Grouped / depthwise conv: input block b and output block b form one unit."""
        a = node.attrs
        m = self._register(path, "grouped", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(a["out_channels"])
        m.inputs = self._merge(m.inputs, v.elems)
        wi, wo = a["in_channels"] // groups, a["out_channels"] // groups
        # with a bias and no norm right after, its output is a gate site (closed channels are
        # zeroed after the bias: Mix-FFN's fc1 -> dwconv -> act -> fc2); behind a norm, the
        # norm is
        users = self.users.get(node.name, [])
        site = bool(a.get("bias")) and not (len(users) == 1 and self._norm_site(users[0]))
        taint: list[str | None] = []
        for b in range(groups):
            block = m.inputs[b * wi : (b + 1) * wi] + m.outputs[b * wo : (b + 1) * wo]
            for e in block[1:]:
                self.uf.union(block[0], e)
            t = next((t for t in v.taint[b * wi : (b + 1) * wi] if t), None)
            taint.extend([None if site else t] * wo)
        self.vals[node.name] = _Val(m.outputs, taint)

    def _consumer_taint(self, node: OpNode, v: _Val) -> bool:
        bad = [(e, t) for e, t in zip(v.elems, v.taint) if t]
        for e, t in bad:
            self.uf.pin([e], f"{t} (not zero-preserving, consumed by `{node.module}`)")
        return not bad

    def _op_linear(self, node: OpNode) -> None:
        """A linear layer: over the last dimension of its input (tokens, channels-last)."""
        v = self._val(self._first(node))
        shape = node.shape
        if not isinstance(shape, tuple) or len(shape) < 2:
            return self._unknown(node)
        last = len(shape) - 1
        if v is None or v.axes != (last,) or len(v.elems) != node.attrs["in_channels"]:
            # inputs the analysis does not follow: they stay, its outputs can still be gated
            if v is not None:
                self.uf.pin(v.elems, node.where)
            v = self._fresh(self.graph_shape(self._first(node)), node.where, -1)
            if v is None or len(v.elems) != node.attrs["in_channels"]:
                return self._unknown(node)
        path = node.module or node.name
        excluded = self._excluded(path)
        m = self._register(path, "conv", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(node.attrs["out_channels"])
        if excluded:
            self.uf.pin(v.elems, _EXCLUDED)
            self.uf.pin(m.outputs, _EXCLUDED)
        m.inputs = self._merge(m.inputs, v.elems)
        self._consumer_taint(node, v)
        self.vals[node.name] = _Val(m.outputs, [None] * len(m.outputs), (last,))
        return None

    def _op_norm(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        path = node.module or node.name
        if v is None or v.axes != (1,):
            return self._unknown(node)
        if self._excluded(path):
            self.uf.pin(v.elems, _EXCLUDED)
        m = self._register(path, "norm", node.where.split(" ")[0])
        m.inputs = self._merge(m.inputs, v.elems)
        groups = node.attrs.get("num_groups")
        if groups:
            size = len(v.elems) // groups
            for g in range(groups):
                for e in m.inputs[g * size + 1 : (g + 1) * size]:
                    self.uf.union(m.inputs[g * size], e)
        # a norm is a gate site: its output is zero on closed channels whatever came in
        out = _Val(m.inputs, [None] * len(m.inputs))
        self.vals[node.name] = [out, None, None] if isinstance(node.shape, list) else out
        return None

    def _op_source(self, node: OpNode) -> None:
        """A layer whose output channels do not depend on its input (a constant layer)."""
        path = node.module or node.name
        m = self._register(path, "source", node.where.split(" ")[0])
        if m.outputs is None:
            m.outputs = self.uf.new(int(node.attrs["out_channels"]))
        ndim = len(node.shape) if isinstance(node.shape, tuple) else 2
        axis = int(node.attrs.get("axis", 1)) % ndim
        self.vals[node.name] = _Val(m.outputs, [None] * len(m.outputs), (axis,))
