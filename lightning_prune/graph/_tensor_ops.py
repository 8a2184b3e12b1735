"""Channel-analysis handlers of weightless tensor operations.

Arithmetic (``add`` / ``sub`` / ``mul`` / ``div``), ``cat``, ``stack``, reshapes, reductions
and ``getitem`` route channels from their inputs to their outputs, tie them
together or, when the channel axis is touched, pin them.
"""

from __future__ import annotations

import math

from lightning_prune.graph._analyser_base import _AnalyserBase
from lightning_prune.graph.channels import _norm_dim, _Val
from lightning_prune.graph.ir import OpNode


class _TensorOps(_AnalyserBase):
    """``_op_<kind>`` handlers of weightless tensor operations."""

    def _op_binary(self, node: OpNode) -> None:
        a, b = (self._val(i) for i in node.inputs)
        shape = node.shape
        if not isinstance(shape, tuple) or len(shape) < 2 or (a is None and b is None):
            return self._unknown(node) if (a or b) else self._op_ignore(node)
        c = shape[1]
        full = [v for v in (a, b) if v is not None and len(v.elems) == c]
        if not full:
            return self._unknown(node)
        for v in (a, b):
            if v is not None and len(v.elems) not in (1, c):
                return self._unknown(node)
        # a tensor operand whose channels the analysis does not follow (a parameter, a buffer,
        # a tensor built in forward): one value for every channel is fine; one per channel
        # must be a parameter sliced with the channels it meets, else they are left as they are
        untracked = [
            self._channel_width(i, len(shape))
            for i, v in zip(node.inputs, (a, b))
            if i is not None and v is None
        ]
        if any(w != 1 for w in untracked) and not self._per_channel_operands(node, full[0]):
            return self._unknown(node)
        if len(full) == 2:
            for x, y in zip(full[0].elems, full[1].elems):
                self.uf.union(x, y)
        self.vals[node.name] = _Val(full[0].elems, self._binary_taint(node, a, b, full, untracked))
        return None

    def _per_channel_operands(self, node: OpNode, v: _Val) -> bool:
        """Whether the per-channel untracked operands of ``node`` can follow ``v``'s channels."""
        return False

    def _channel_width(self, name: str, ndim: int) -> int | None:
        """Size along the channel axis of an operand broadcast to ``ndim`` dimensions."""
        shape = self.graph_shape(name)
        if not isinstance(shape, tuple):
            return None
        axis = 1 - (ndim - len(shape))
        return shape[axis] if 0 <= axis < len(shape) else 1

    @staticmethod
    def _binary_taint(
        node: OpNode, a: _Val | None, b: _Val | None, full: list[_Val], untracked: list
    ) -> list[str | None]:
        """Which output channels may be non-zero where the (full-width) inputs are zero."""
        op, base = node.attrs["op"], full[0]
        c = len(base.elems)
        if op in ("add", "sub"):
            scalar = node.attrs.get("scalar")
            nonzero_scalar = scalar is not None and not (
                isinstance(scalar, (int, float)) and scalar == 0
            )
            broadcast = any(v is not None and len(v.elems) != c for v in (a, b))
            shifted = nonzero_scalar or broadcast or bool(untracked)
            taint = []
            for i in range(c):
                t = base.taint[i]
                if len(full) == 2:
                    t = t or full[1].taint[i]
                taint.append(t or (node.where if shifted else None))
            return taint
        if op == "mul":
            if len(full) == 2:
                return [x if (x and y) else None for x, y in zip(full[0].taint, full[1].taint)]
            return list(base.taint)
        # div: zero only if the numerator is
        num = a if a is not None and len(a.elems) == c else None
        return list(num.taint) if num is not None else [node.where] * c

    def _op_cat(self, node: OpNode) -> None:
        found = [self._val(i) for i in node.inputs]
        vals = [v for v in found if v is not None]
        shape = node.shape
        if len(vals) < len(found) or not isinstance(shape, tuple):
            return self._unknown(node)
        dim = _norm_dim(int(node.attrs["dim"]), len(shape))
        if dim == 1:
            elems = [e for v in vals for e in v.elems]
            taint = [t for v in vals for t in v.taint]
            self.vals[node.name] = _Val(elems, taint)
            return None
        merged = self._tie_inputs(vals)
        if merged is None:
            return self._unknown(node)
        self.vals[node.name] = merged
        return None

    def _op_stack(self, node: OpNode) -> None:
        """``stack(dim=0)`` followed by a sum / mean over dim 0 is an n-ary add (smp FPN)."""
        found = [self._val(i) for i in node.inputs]
        vals = [v for v in found if v is not None]
        if len(vals) < len(found) or _norm_dim(int(node.attrs["dim"]), 5) != 0:
            return self._unknown(node)
        merged = self._tie_inputs(vals)
        if merged is None:
            return self._unknown(node)
        self.stacked.add(node.name)
        self.vals[node.name] = merged
        return None

    def _tie_inputs(self, vals: list[_Val]) -> _Val | None:
        """Tie equally wide inputs channel by channel (``None`` when the widths differ)."""
        first = vals[0]
        if any(len(v.elems) != len(first.elems) for v in vals[1:]):
            return None
        for v in vals[1:]:
            for x, y in zip(first.elems, v.elems):
                self.uf.union(x, y)
        taint = [
            next((v.taint[i] for v in vals if v.taint[i]), None) for i in range(len(first.elems))
        ]
        return _Val(first.elems, taint)

    def _op_reshape(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        out = node.shape
        if v is None or not isinstance(out, tuple) or not isinstance(src, tuple):
            return self._unknown(node) if v is not None else self._op_ignore(node)
        if out[:2] == src[:2]:
            self.vals[node.name] = v
            return None
        spatial = math.prod(src[2:])
        if len(out) == 2 and out[0] == src[0] and out[1] == src[1] * spatial:
            elems = [e for e in v.elems for _ in range(spatial)]
            taint = [t for t in v.taint for _ in range(spatial)]
            self.vals[node.name] = _Val(elems, taint)
            return None
        return self._unknown(node)

    def _op_reduce(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        dims = node.attrs.get("dims")
        if v is None or not isinstance(src, tuple) or dims is None:
            return self._unknown(node) if v is not None else self._op_ignore(node)
        dims = [_norm_dim(d, len(src)) for d in dims]
        if (
            self._first(node) in self.stacked
            and dims == [0]
            and len(node.shape or ()) == len(src) - 1
        ):
            self.vals[node.name] = v
            return None
        if 0 in dims or 1 in dims:
            return self._unknown(node)
        self.vals[node.name] = v
        return None

    def _op_getitem(self, node: OpNode) -> None:
        src = self.vals.get(self._first(node) or "")
        index = node.attrs.get("index")
        if isinstance(src, list) and isinstance(index, int) and -len(src) <= index < len(src):
            self.vals[node.name] = src[index]
        else:
            self._unknown(node)
