"""Channel-analysis handlers of layout operations, attention and layer normalisation.

Transformers keep their channels in the last dimension, split them into heads and bring them
back: :class:`_LayoutOps` follows them through permutations, indexing, batched matrix
products and fused attention (a head becomes one unit across its query, key, value and the
output projection's inputs), records the reshapes that split channels (collapse updates the
head count the module reads), slices the per-channel parameters they meet (relative position
biases, layer scales) and treats ``LayerNorm`` as statistics over the channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lightning_prune.graph import _layout as layout
from lightning_prune.graph._mha_ops import _MhaOps
from lightning_prune.graph.channels import ModuleChannels, _Val
from lightning_prune.graph.ir import OpNode

#: How the analysis treats the channels normalised by a LayerNorm (see ``analyse``).
EMBEDDING_MODES = ("pin", "renormalize")
LAYER_NORM_REASON = (
    "LayerNorm statistics (the embedding width; augment(..., embedding='renormalize') prunes it)"
)


class _LayoutOps(_MhaOps):
    """``_op_<kind>`` handlers of layout operations, attention and LayerNorm."""

    embedding: str = "pin"

    # ------------------------------------------------------------------------- helpers
    def _aligned(self, name: str | None, v: _Val | None, ndim: int) -> _Val | None:
        """``v`` with its channel axes counted in the broadcast output's dimensions."""
        shape = self.graph_shape(name)
        if v is None or not isinstance(shape, tuple):
            return None
        v = layout.canonical(v)
        shift = ndim - len(shape)
        return v.moved(tuple(a + shift for a in v.axes)) if shift else v

    @staticmethod
    def _spans(v: _Val, shape: tuple[int, ...]) -> bool:
        """Whether ``v`` covers the channel axes of a tensor of ``shape`` (not broadcast)."""
        return all(a < len(shape) and shape[a] == d for a, d in zip(v.axes, v.dims))

    def _size_along(self, name: str | None, dim: int, ndim: int) -> int:
        """Size of operand ``name`` along output dimension ``dim`` (1 where broadcast)."""
        shape = self.graph_shape(name)
        if not isinstance(shape, tuple):
            return 1
        a = dim - (ndim - len(shape))
        return shape[a] if 0 <= a < len(shape) else 1

    def _per_channel_constant(self, name: str, v: _Val, ndim: int) -> bool:
        """Register constant operand ``name`` (one value per channel of ``v``) for slicing.

        It must be computed from one parameter by layout operations only, with the channel
        dimension running along one dimension of that parameter (see
        :mod:`~lightning_prune.graph.constants`); collapse then slices the parameter with the
        channels. Returns whether that holds.
        """
        node = self.by_name.get(name)
        const = node.attrs.get("const") if node is not None else None
        shape = self.graph_shape(name)
        if const is None or v.axis is None or not isinstance(shape, tuple):
            return False
        a = v.axis - (ndim - len(shape))
        if not 0 <= a < len(shape) or shape[a] != len(v.elems):
            return False
        param_axis = const.axes[a]
        if param_axis is None:
            return False
        m = self.modules.get(const.name)
        if m is not None and (m.role != "param" or m.attrs.get("axis") != param_axis):
            return False
        m = self._register(const.name, "param", "Parameter")
        m.attrs["axis"] = param_axis
        views = [
            [list(shape), list(axes).index(param_axis)]
            for shape, axes in const.views
            if param_axis in axes
        ]
        m.attrs["views"] = views
        m.outputs = self._merge(m.outputs, v.elems)
        return True

    def _op_spec(self, node: OpNode, v: _Val) -> None:
        """Record an operation whose FLOPs scale with the kept units of its output ``v``."""
        m = self._register(f"{node.scope}:{node.name}", "op", node.where.split(" ")[0])
        m.outputs = list(v.elems)
        m.attrs["node"] = node.name

    # -------------------------------------------------------------------------- layout
    def _op_permute(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        if v is None:
            return self._op_ignore(node)
        self.vals[node.name] = layout.permute(v, node.attrs["perm"])
        return None

    def _op_expand(self, node: OpNode) -> None:
        v = self._val(self._first(node))
        src, out = self.graph_shape(self._first(node)), node.shape
        if v is None or not isinstance(src, tuple) or not isinstance(out, tuple):
            return self._unknown(node) if v is not None else self._op_ignore(node)
        moved = v.moved(tuple(a + len(out) - len(src) for a in v.axes))
        if not self._spans(moved, out):
            return self._unknown(node)
        self.vals[node.name] = moved
        return None

    def _op_index(self, node: OpNode) -> None:
        """``x[items]`` with integers, slices and ``None``: channels follow their dimension."""
        v = self._val(self._first(node))
        src = self.graph_shape(self._first(node))
        if v is None or not isinstance(src, tuple):
            return self._op_ignore(node) if v is None else self._unknown(node)
        out_dim: dict[int, int] = {}  # source dim -> output dim
        d = o = 0
        for item in node.attrs["items"]:
            if item[0] == "none":
                o += 1
                continue
            if d >= len(src):
                return self._unknown(node)
            size = src[d]
            if item[0] == "int":
                idx = [item[1] % size] if -size <= item[1] < size else []
            else:
                idx = list(range(size))[slice(*item[1:])]
            partial = idx != list(range(size))
            if d in v.axes and partial:
                if len(v.axes) == 1 or not idx:  # positions of a code constant (see slice)
                    return self._unknown(node)
                k = v.axes.index(d)
                layout.tie_axis(self.uf, v, k)
                v = layout.take(v, k, idx, keep_axis=True)
            elif d == 0 and partial:
                return self._unknown(node)
            if item[0] == "slice":
                out_dim[d] = o
                o += 1
            d += 1
        for rest in range(d, len(src)):
            out_dim[rest] = o + rest - d
        kept = [k for k, a in enumerate(v.axes) if a in out_dim]
        if len(kept) < len(v.axes):  # integer-indexed channel dims (one position left)
            ids, pos = layout.element_array(v)
            dropped = tuple(k for k in range(len(v.axes)) if k not in kept)
            ids, pos = ids.squeeze(dropped), pos.squeeze(dropped)
            v = layout.from_arrays(v, ids, pos, [v.axes[k] for k in kept])
        if not v.axes:
            return self._unknown(node)
        self.vals[node.name] = v.moved(tuple(out_dim[a] for a in v.axes))
        return None

    # ----------------------------------------------------------------------- attention
    def _contract(self, v: _Val | None, dim: int) -> bool:
        """Tie ``v`` along contracted dimension ``dim``; ``False`` when it cannot be."""
        if v is None or dim not in v.axes:
            return True
        if len(v.axes) == 1:  # a product with channels on the contracted dim: a linear layer
            return False  # with a computed weight, which the analysis does not slice
        layout.tie_axis(self.uf, v, v.axes.index(dim))
        return True

    def _pair_batch(
        self, names: Sequence[str | None], vals: Sequence[_Val | None], ndim: int
    ) -> list[int] | None:
        """Tie the operands' channels along their shared batch dimensions (the heads).

        Returns those dimensions, or ``None`` when an operand that the analysis does not
        follow varies along one of them.
        """
        batch = sorted({a for v in vals if v is not None for a in v.axes if a < ndim - 2})
        for dim in batch:
            groups: list[list[np.ndarray]] = []
            for name, v in zip(names, vals):
                if v is not None and dim in v.axes:
                    ids, _ = layout.element_array(v)
                    groups.append(list(np.moveaxis(ids, v.axes.index(dim), 0)))
                elif name is not None and self._size_along(name, dim, ndim) != 1:
                    return None
            for i in range(len(groups[0])):
                elems = [int(e) for g in groups for e in np.asarray(g[i]).reshape(-1)]
                layout.tie_all(self.uf, elems)
        return batch

    def _op_matmul(self, node: OpNode) -> None:
        """``a @ b`` over batched matrices: ``q @ k.transpose(-2, -1)``, ``attn @ v``."""
        out = node.shape
        names = node.inputs
        raw = [self._val(i) for i in names]
        if not any(raw):
            return self._op_ignore(node)
        shapes = [self.graph_shape(i) for i in names]
        if (
            not isinstance(out, tuple)
            or len(out) < 3
            or any(not isinstance(s, tuple) or len(s) < 2 for s in shapes)
        ):
            return self._unknown(node)
        r = len(out)
        a, b = (self._aligned(i, v, r) for i, v in zip(names, raw))
        if not self._contract(a, r - 1) or not self._contract(b, r - 2):
            return self._unknown(node)
        if a is not None and b is not None and r - 2 in a.axes and r - 1 in b.axes:
            return self._unknown(node)
        if self._pair_batch(names, (a, b), r) is None:
            return self._unknown(node)
        if a is None or (b is not None and r - 1 in b.axes):
            base, other, drop = b, a, r - 2  # the output follows b's columns
        else:
            base, other, drop = a, b, r - 1  # ... or a's rows
        assert base is not None
        result = layout.drop_axis(base, drop)
        if other is not None and not any(other.taint):
            result = _Val(result.elems, [None] * len(result.elems), result.axes, result.dims)
        self.vals[node.name] = result
        if result.axes:  # FLOPs scale with the kept channels: heads, rows or columns
            self._op_spec(node, result)
        return None

    def _op_attention(self, node: OpNode) -> None:
        """``F.scaled_dot_product_attention(q, k, v, attn_mask)``.

        The heads of query, key and value pair up; the output follows the value's channels.
        """
        names = node.inputs[:3]
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        raw = [self._val(i) for i in names]
        out = node.shape
        if not any(raw) and self._val(mask) is None:
            return self._op_ignore(node)
        if not isinstance(out, tuple) or len(out) < 3 or self._val(mask) is not None:
            return self._unknown(node)
        r = len(out)
        q, k, v = (self._aligned(i, x, r) for i, x in zip(names, raw))
        for x in (q, k, v):
            if x is not None and r - 2 in x.axes:
                return self._unknown(node)
        if not self._contract(q, r - 1) or not self._contract(k, r - 1):
            return self._unknown(node)
        if v is None:
            return self._unknown(node)
        batch = self._pair_batch(names, (q, k, v), r)
        if batch is None:
            return self._unknown(node)
        if mask is not None and any(self._size_along(mask, d, r) != 1 for d in batch):
            heads = layout.drop_axis(v, r - 1) if r - 1 in v.axes else v
            if len(batch) != 1 or not self._per_channel_constant(mask, heads, r):
                return self._unknown(node)
        self.vals[node.name] = v
        self._op_spec(node, v)
        return None

    # ------------------------------------------------------------------------ LayerNorm
    def _norm_axis(self, node: OpNode, v: _Val, shape: tuple[int, ...]) -> int | None:
        """The dimension a LayerNorm normalises ``v``'s channels along (``None``: not its)."""
        a = node.attrs
        if v.axis is None or a["normalized"] != 1 or shape[v.axis] != a["size"]:
            return None
        layout = a.get("layout")
        if layout == "first":
            return v.axis if v.axis == 1 else None
        if layout == "last" or node.module is None:  # F.layer_norm: the trailing dimension
            return v.axis if v.axis == len(shape) - 1 else None
        return v.axis  # a LayerNorm of its own: statistics over the channels all the same

    def _op_layer_norm(self, node: OpNode) -> None:
        """LayerNorm: its statistics mix the channels it normalises.

        By default (``embedding="pin"``) those channels are never removed. With
        ``embedding="renormalize"`` a LayerNorm module over the channel dimension is a gate
        site whose statistics are taken over the open channels only (see
        :class:`~lightning_prune.surgery.norm.MaskedLayerNorm`): the gated model and the
        compact one compute the same thing.
        """
        v = self._val(self._first(node))
        shape = node.shape
        if v is None or not isinstance(shape, tuple):
            return self._unknown(node) if v is not None else self._op_ignore(node)
        axis = self._norm_axis(node, v, shape)
        path = node.module or node.name
        site = self.embedding == "renormalize" and node.attrs.get("layout") is not None
        if axis is None or not site or node.module is None or self._excluded(path):
            reason = LAYER_NORM_REASON
            self.uf.pin(v.elems, reason)
            self.vals[node.name] = self._fresh(shape, reason, -1 if axis is None else axis)
            return None
        m: ModuleChannels = self._register(path, "norm", node.where.split(" ")[0])
        m.inputs = self._merge(m.inputs, v.elems)
        m.attrs["layer_norm"] = 1 if node.attrs["layout"] == "first" else -1
        self.vals[node.name] = _Val(m.inputs, [None] * len(m.inputs), v.axes)
        return None

    # ---------------------------------------------------------------------- split heads
    def _resolve_splits(self) -> None:
        """Check the reshapes that split channels into several dimensions.

        Collapse can shrink one of those dimensions (the heads; the others are tied by the
        operations that read them by position): more than one free dimension would leave a
        non-rectangular set of channels, so their channels are pinned. Each split with one
        free dimension is recorded as a ``"heads"`` entry of its module, so collapse updates
        the sizes the module reads at run time (``num_heads``, ``attn_dim``).
        """
        for node, arr in self.splits:
            roots = np.vectorize(self.uf.find)(arr) if arr.size else arr
            free = [
                k
                for k in range(arr.ndim)
                if arr.shape[k] > 1
                and any(
                    len(set(row.tolist())) > 1
                    for row in np.moveaxis(roots, k, -1).reshape(-1, arr.shape[k])
                )
            ]
            if len(free) > 1:
                self.uf.pin(
                    [int(e) for e in arr.reshape(-1)],
                    f"{node.where} (channels split into several dimensions)",
                )
                continue
            if not free:
                continue
            k = free[0]
            heads = np.moveaxis(arr, k, 0).reshape(arr.shape[k], -1)[:, 0]
            m = self._register(f"{node.scope}:{node.name}", "heads", node.where.split(" ")[0])
            m.outputs = [int(e) for e in heads]
            size = int(arr.shape[k])
            m.attrs.update({"scope": node.scope, "size": size, "rest": int(arr.size // size)})
