"""Channel-analysis handlers of splits and slices along the channel axis.

``chunk(n)`` splits whatever width it gets evenly, so channel ``j`` of every chunk is one unit
and the pieces stay equal after collapse. A split with explicit sizes (``split(x, [a, b], 1)``,
``split(x, s, 1)``) or a slice (``x[:, a:b]``, ``narrow``) selects channels by constants of
the model's code: its pieces keep their own channels (the units they feed are pruned freely),
and the call is recorded as a :class:`~.channel_args.SizedCall` so that collapse rewrites
those constants for the compact model (:mod:`~lightning_prune.graph.channel_args`).

A call is left as it is (its input channels pinned) when its bounds step over channels, or
when the module making it is called more than once per forward (its calls could then need
different arguments each time).
"""

from __future__ import annotations

from lightning_prune.graph._tensor_ops import _TensorOps
from lightning_prune.graph.channel_args import Key, SizedCall, slice_key, split_key
from lightning_prune.graph.channels import _norm_dim, _Val
from lightning_prune.graph.ir import OpNode


class _SplitOps(_TensorOps):
    """``_op_split`` / ``_op_slice``, recording every call with channel-counting arguments."""

    @property
    def sized_calls(self) -> list[SizedCall]:
        """Calls whose arguments count channels, in graph order."""
        if not hasattr(self, "_sized_calls"):
            self._sized_calls: list[SizedCall] = []
        return self._sized_calls

    def _repeated(self, scope: str) -> bool:
        """Whether the module at ``scope`` is called more than once in the traced forward."""
        if not hasattr(self, "_repeated_scopes"):
            self._repeated_scopes = {n.scope for n in self.graph.nodes if "@" in n.scope_call}
        return scope in self._repeated_scopes

    def _record(
        self, node: OpNode, key: Key | None, v: _Val | None, spans: list[tuple[int, int]]
    ) -> None:
        if key is not None:
            elems = list(v.elems) if v is not None and spans else None
            self.sized_calls.append(SizedCall(node.scope, key, elems, spans))

    def _slice_key(self, node: OpNode) -> Key | None:
        a = node.attrs
        return slice_key(a.get("dim", 1), a.get("start"), a.get("stop"), a.get("step"))

    def _op_slice(self, node: OpNode) -> None:
        key = self._slice_key(node)
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        if v is None or not isinstance(src, tuple):
            self._record(node, key, None, [])
            return self._unknown(node) if v is not None else self._op_ignore(node)
        a = node.attrs
        dim = _norm_dim(int(a.get("dim", 1)), len(src))
        if dim == 0 or v.axis != dim:
            # the batch, a dimension other than the channels' or one of several channel
            # dimensions (a head's width): see _TensorOps._op_slice
            self._record(node, key, None, [])
            return super()._op_slice(node)
        positions = range(len(v.elems))[slice(a.get("start"), a.get("stop"), a.get("step"))]
        if key is None:  # a full slice whatever the width: nothing to rewrite
            return self._keep(node, v)
        if positions.step != 1 or not len(positions) or self._repeated(node.scope):
            self._record(node, key, None, [])
            return self._unknown(node)
        lo, hi = positions.start, positions.stop
        self._record(node, key, v, [(lo, hi)])
        self.vals[node.name] = _Val(v.elems[lo:hi], v.taint[lo:hi], v.axes)
        return None

    def _keep(self, node: OpNode, v: _Val) -> None:
        self.vals[node.name] = v

    def _op_split(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        shapes = node.shape
        src = self.graph_shape(self._first(node))
        a = node.attrs
        key = split_key(a.get("dim", 0), a.get("sizes")) if "sizes" in a else None
        if v is None or not isinstance(shapes, list) or not isinstance(src, tuple):
            self._record(node, key, None, [])
            return self._unknown(node)
        if a.get("same"):  # e.g. max_pool2d_with_indices: (values, indices)
            self.vals[node.name] = [v] + [None] * (len(shapes) - 1)
            return None
        dim = _norm_dim(int(a.get("dim", 0)), len(src))
        if dim == 0 or v.axis != dim or a.get("unbind"):
            # the batch, another dimension, one of several channel dimensions (the query, key
            # and value of a head) or an unbind: see _TensorOps._op_split
            self._record(node, key, None, [])
            return super()._op_split(node)
        widths = [s[dim] if s and len(s) > dim else 0 for s in shapes]
        if a.get("chunks"):
            return self._chunk(node, v, widths)
        if key is None or self._repeated(node.scope) or sum(widths) != len(v.elems):
            self._record(node, key, None, [])
            return self._unknown(node)
        spans, start = [], 0
        for w in widths:
            spans.append((start, start + w))
            start += w
        self._record(node, key, v, spans)
        self.vals[node.name] = [_Val(v.elems[lo:hi], v.taint[lo:hi], v.axes) for lo, hi in spans]
        return None
