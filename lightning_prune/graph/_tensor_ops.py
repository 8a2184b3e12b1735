"""Channel-analysis handlers of weightless tensor operations.

Arithmetic (``add`` / ``sub`` / ``mul`` / ``div``), ``cat``, ``stack``, reshapes, reductions,
slices, splits and ``getitem`` route channels from their inputs to their outputs, tie them
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
        op = node.attrs["op"]
        c = shape[1]
        full = [v for v in (a, b) if v is not None and len(v.elems) == c]
        if not full:
            return self._unknown(node)
        for v in (a, b):
            if v is not None and len(v.elems) not in (1, c):
                return self._unknown(node)
        if len(full) == 2:
            for x, y in zip(full[0].elems, full[1].elems):
                self.uf.union(x, y)
        base = full[0]
        if op in ("add", "sub"):
            scalar = node.attrs.get("scalar")
            nonzero_scalar = scalar is not None and not (
                isinstance(scalar, (int, float)) and scalar == 0
            )
            other = [v for v in (a, b) if v is not None and v is not base]
            broadcast_other = other and len(other[0].elems) != c
            taint = []
            for i in range(c):
                t = base.taint[i]
                if len(full) == 2:
                    t = t or full[1].taint[i]
                if nonzero_scalar or broadcast_other:
                    t = t or node.where
                taint.append(t)
        elif op == "mul":
            if len(full) == 2:
                taint = [x if (x and y) else None for x, y in zip(full[0].taint, full[1].taint)]
            else:
                taint = list(base.taint)
        else:  # div: zero only if the numerator is
            num = a if a is not None and len(a.elems) == c else None
            taint = list(num.taint) if num is not None else [node.where] * c
        self.vals[node.name] = _Val(base.elems, taint)
        return None

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
        v = self._val(node.inputs[0] if node.inputs else None)
        src = self.graph_shape(node.inputs[0]) if node.inputs else None
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
        v = self._val(node.inputs[0] if node.inputs else None)
        src = self.graph_shape(node.inputs[0]) if node.inputs else None
        dims = node.attrs.get("dims")
        if v is None or not isinstance(src, tuple) or dims is None:
            return self._unknown(node) if v is not None else self._op_ignore(node)
        dims = [_norm_dim(d, len(src)) for d in dims]
        if node.inputs[0] in self.stacked and dims == [0] and len(node.shape or ()) == len(src) - 1:
            self.vals[node.name] = v
            return None
        if 0 in dims or 1 in dims:
            return self._unknown(node)
        self.vals[node.name] = v
        return None

    def _op_slice(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        if v is None:
            return self._op_ignore(node)
        a = node.attrs
        src = self.graph_shape(node.inputs[0])
        dim = _norm_dim(int(a.get("dim", 1)), len(src)) if isinstance(src, tuple) else 1
        if dim == 0:
            return self._unknown(node)
        if dim != 1:
            self.vals[node.name] = v
            return None
        idx = list(range(len(v.elems)))[slice(a.get("start"), a.get("stop"), a.get("step"))]
        self.vals[node.name] = _Val([v.elems[i] for i in idx], [v.taint[i] for i in idx])
        return None

    def _op_split(self, node: OpNode) -> None:
        v = self._val(node.inputs[0])
        shapes = node.shape
        src = self.graph_shape(node.inputs[0])
        if v is None or not isinstance(shapes, list) or not isinstance(src, tuple):
            return self._unknown(node)
        if node.attrs.get("same"):  # e.g. max_pool2d_with_indices: (values, indices)
            self.vals[node.name] = [v] + [None] * (len(shapes) - 1)
            return None
        dim = _norm_dim(int(node.attrs.get("dim", 0)), len(src))
        if dim == 0:
            return self._unknown(node)
        if dim != 1:
            self.vals[node.name] = [v for _ in shapes]
            return None
        out: list[_Val | None] = []
        start = 0
        for s in shapes:
            n = s[1] if s else 0
            out.append(_Val(v.elems[start : start + n], v.taint[start : start + n]))
            start += n
        self.vals[node.name] = out
        return None

    def _op_getitem(self, node: OpNode) -> None:
        src = self.vals.get(node.inputs[0] or "")
        index = node.attrs.get("index")
        if isinstance(src, list) and isinstance(index, int) and -len(src) <= index < len(src):
            self.vals[node.name] = src[index]
        else:
            self._unknown(node)
