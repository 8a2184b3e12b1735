"""Channel-analysis handlers of weightless tensor operations.

Arithmetic (``add`` / ``sub`` / ``mul`` / ``div``), ``cat``, ``stack``, reshapes, reductions
and ``getitem`` route channels from their inputs to their outputs, tie them
together or, when the channel axis is touched, pin them.
"""

from __future__ import annotations

from lightning_prune.graph import _layout as layout
from lightning_prune.graph._layout_ops import _LayoutOps
from lightning_prune.graph.channels import _norm_dim, _Val
from lightning_prune.graph.ir import OpNode

#: Why a reshape's channel split is pinned.
COMPUTED = (
    "(it splits the channels into blocks whose size is computed from a tensor's size, such as "
    "attention heads or shuffle groups: the number of blocks cannot change)"
)


class _TensorOps(_LayoutOps):
    """``_op_<kind>`` handlers of weightless tensor operations."""

    def _op_binary(self, node: OpNode) -> None:
        shape = node.shape
        raw = [self._val(i) for i in node.inputs]
        if not isinstance(shape, tuple) or len(shape) < 2 or not any(raw):
            return self._unknown(node) if any(raw) else self._op_ignore(node)
        a, b = (self._aligned(i, v, len(shape)) for i, v in zip(node.inputs, raw))
        full = [v for v in (a, b) if v is not None and self._spans(v, shape)]
        if not full:
            return self._unknown(node)
        axes, dims = full[0].axes, full[0].dims
        for v in (a, b):
            if v is not None and (v.axes != axes or (v.dims != dims and set(v.dims) != {1})):
                return self._unknown(node)
        # a tensor operand whose channels the analysis does not follow (a parameter, a buffer,
        # a tensor built in forward): one value for every channel is fine; one per channel is
        # fine for a parameter the analysis can slice with the channels it meets (a layer
        # scale, a bias tensor, a relative position bias); anything else is left as it is
        untracked = [
            self._channel_width(i, len(shape), axes)
            for i, v in zip(node.inputs, (a, b))
            if i is not None and v is None
        ]
        constants = [i for i, v in zip(node.inputs, (a, b)) if i is not None and v is None]
        if any(w != 1 for w in untracked) and not (
            full[0].axes == (1,) and self._per_channel_operands(node, full[0])
        ):
            for name, w in zip(constants, untracked):
                if w != 1 and not self._per_channel_constant(name, full[0], len(shape)):
                    return self._unknown(node)
        if len(full) == 2:
            for x, y in zip(full[0].elems, full[1].elems):
                self.uf.union(x, y)
        taint = self._binary_taint(node, a, b, full, untracked)
        self.vals[node.name] = _Val(full[0].elems, taint, axes, dims)
        return None

    def _per_channel_operands(self, node: OpNode, v: _Val) -> bool:
        """Whether the per-channel untracked operands of ``node`` can follow ``v``'s channels."""
        return False

    def _channel_width(self, name: str, ndim: int, axes: tuple[int, ...] = (1,)) -> int | None:
        """Size along the channel axes of an operand broadcast to ``ndim`` dimensions."""
        shape = self.graph_shape(name)
        if not isinstance(shape, tuple):
            return None
        width = 1
        for axis in axes:
            a = axis - (ndim - len(shape))
            width *= shape[a] if 0 <= a < len(shape) else 1
        return width

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
        shape = node.shape
        if not isinstance(shape, tuple) or not any(found):
            return self._unknown(node) if any(found) else self._op_ignore(node)
        vals = [self._aligned(i, v, len(shape)) for i, v in zip(node.inputs, found)]
        dim = _norm_dim(int(node.attrs["dim"]), len(shape))
        present = [v for v in vals if v is not None]
        if dim in present[0].axes:
            if len(present) < len(vals) or any(v.axes != (dim,) for v in present):
                return self._unknown(node)
            elems = [e for v in present for e in v.elems]
            taint = [t for v in present for t in v.taint]
            self.vals[node.name] = _Val(elems, taint, (dim,))
            return None
        merged = self._tie_inputs(present)
        if merged is None:
            return self._unknown(node)
        for name, v in zip(node.inputs, vals):  # e.g. a class token put before the patches
            if v is None and (
                name is None or not self._per_channel_constant(name, merged, len(shape))
            ):
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
        """Tie equally laid-out inputs channel by channel (``None`` when they differ)."""
        first = vals[0]
        if any(v.axes != first.axes or v.dims != first.dims for v in vals[1:]):
            return None
        for v in vals[1:]:
            for x, y in zip(first.elems, v.elems):
                self.uf.union(x, y)
        taint = [
            next((v.taint[i] for v in vals if v.taint[i]), None) for i in range(len(first.elems))
        ]
        return _Val(first.elems, taint, first.axes, first.dims)

    def _op_reshape(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        out = node.shape
        if v is None or not isinstance(out, tuple) or not isinstance(src, tuple):
            return self._unknown(node) if v is not None else self._op_ignore(node)
        done = layout.reshape(v, src, out)
        if done is None:
            return self._unknown(node)
        computed = set(node.attrs.get("computed", ()))
        for arr, block in done.splits:  # channels split into (or merged from) several dims
            if computed & set(block):  # e.g. reshape(B, N, H, C // H): sizes stay as they are
                self.uf.pin([int(e) for e in arr.reshape(-1)], f"{node.where} {COMPUTED}")
            self.splits.append((node, arr))
        out_axis = done.val.axis
        if out_axis is not None and out_axis in node.attrs.get("literal", ()):
            # reshape(B, self.hidden_dim, -1): the module reads the channel count
            m = self._register(f"{node.scope}:{node.name}", "heads", node.where.split(" ")[0])
            m.outputs = list(done.val.elems)
            m.attrs.update({"scope": node.scope, "size": out[out_axis], "rest": 1, "width": 1})
        self.vals[node.name] = done.val
        return None

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
        if 0 in dims or any(d in v.axes for d in dims):
            return self._unknown(node)
        if len(node.shape or ()) < len(src):  # keepdim=False: later dimensions move up
            v = v.moved(tuple(a - sum(1 for d in dims if d < a) for a in v.axes))
        self.vals[node.name] = v
        return None

    def _op_slice(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        if v is None:
            return self._op_ignore(node)
        a = node.attrs
        src = self.graph_shape(self._first(node))
        dim = _norm_dim(int(a.get("dim", 1)), len(src)) if isinstance(src, tuple) else 1
        if dim == 0:
            return self._unknown(node)
        if dim not in v.axes:
            self.vals[node.name] = v
            return None
        k = v.axes.index(dim)
        idx = list(range(v.dims[k]))[slice(a.get("start"), a.get("stop"), a.get("step"))]
        if idx == list(range(v.dims[k])):
            self.vals[node.name] = v
            return None
        if len(v.axes) == 1:
            # the bounds are constants of the model's code: once channels are removed they
            # would select other channels, so the sliced tensor keeps all of its channels
            return self._unknown(node)
        # a slice of a channel dimension that is not the one collapse shrinks (a head's width):
        # tie along it, so that it keeps its size
        layout.tie_axis(self.uf, v, k)
        self.vals[node.name] = layout.take(v, k, idx, keep_axis=True)
        return None

    def _op_split(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        shapes = node.shape
        src = self.graph_shape(self._first(node))
        if v is None or not isinstance(shapes, list) or not isinstance(src, tuple):
            return self._unknown(node)
        if node.attrs.get("same"):  # e.g. max_pool2d_with_indices: (values, indices)
            self.vals[node.name] = [v] + [None] * (len(shapes) - 1)
            return None
        dim = _norm_dim(int(node.attrs.get("dim", 0)), len(src))
        unbind = bool(node.attrs.get("unbind"))
        if dim == 0 and not (unbind and dim in v.axes):
            return self._unknown(node)
        if dim not in v.axes:
            piece = layout.drop_dim(v, dim) if unbind else v
            self.vals[node.name] = [piece for _ in shapes]
            return None
        if len(v.axes) > 1:
            return self._split_channel_dim(node, v, dim, shapes, unbind)
        widths = [s[dim] if s and len(s) > dim else 0 for s in shapes]
        if unbind or not node.attrs.get("chunks") or len(set(widths)) != 1:
            # split sizes are constants of the model's code (see _op_slice)
            return self._unknown(node)
        return self._chunk(node, v, widths)

    def _chunk(self, node: OpNode, v: _Val, widths: list[int]) -> None:
        """``chunk(n)``: channel ``j`` of every chunk is one unit.

        chunk(n) splits whatever width it gets evenly, so each chunk keeps the same positions
        and the pieces stay equal after collapse.
        """
        if len(set(widths)) != 1:
            return self._unknown(node)
        w = widths[0]
        for k in range(1, len(widths)):
            for j in range(w):
                self.uf.union(v.elems[j], v.elems[k * w + j])
        self.vals[node.name] = [
            _Val(v.elems[k * w : (k + 1) * w], v.taint[k * w : (k + 1) * w], v.axes)
            for k in range(len(widths))
        ]
        return None

    def _split_channel_dim(
        self, node: OpNode, v: _Val, dim: int, shapes: list, unbind: bool
    ) -> None:
        """Split / unbind along one of several channel dimensions (``q, k, v = qkv.unbind(0)``).

        The pieces are picked by position, so that dimension must keep its size: its elements
        are tied (the query, key and value of a head form one unit).
        """
        k = v.axes.index(dim)
        layout.tie_axis(self.uf, v, k)
        pieces: list[_Val | None] = []
        start = 0
        for s in shapes:
            width = 1 if unbind else (s[dim] if s else 0)
            idx = list(range(start, start + width))
            start += width
            pieces.append(layout.take(v, k, idx, keep_axis=not unbind))
        self.vals[node.name] = pieces

    def _op_getitem(self, node: OpNode) -> None:
        src = self.vals.get(self._first(node) or "")
        index = node.attrs.get("index")
        if isinstance(src, list) and isinstance(index, int) and -len(src) <= index < len(src):
            self.vals[node.name] = src[index]
        else:
            self._unknown(node)
