"""Channel maps across tensor layouts: moving, splitting and merging the channel dimensions.

Pure helpers on :class:`~.channels._Val` used by the analyser's layout handlers (reshapes,
permutations, selections along a channel dimension, batched matrix products). A value's
elements are viewed as an integer array whose dimensions are the value's channel axes (in the
order listed); the helpers work on that array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lightning_prune.graph.channels import _UnionFind, _Val

Shape = tuple[int, ...]


def element_array(v: _Val) -> tuple[np.ndarray, np.ndarray]:
    """Element ids and taint indices of ``v`` as arrays shaped ``v.dims``.

    The taint array holds indices into ``v.taint`` (so the reasons move with the elements).
    """
    ids = np.asarray(v.elems, dtype=np.int64).reshape(v.dims)
    pos = np.arange(len(v.elems), dtype=np.int64).reshape(v.dims)
    return ids, pos


def from_arrays(v: _Val, ids: np.ndarray, pos: np.ndarray, axes: Sequence[int]) -> _Val:
    """A value with the elements of ``ids`` (taint taken from ``v`` at ``pos``)."""
    taint = [v.taint[int(i)] for i in pos.reshape(-1)]
    return _Val([int(e) for e in ids.reshape(-1)], taint, tuple(axes), tuple(ids.shape))


def canonical(v: _Val) -> _Val:
    """The same value with its channel axes listed in increasing tensor order."""
    if list(v.axes) == sorted(v.axes):
        return v
    order = sorted(range(len(v.axes)), key=lambda k: v.axes[k])
    ids, pos = element_array(v)
    return from_arrays(v, ids.transpose(order), pos.transpose(order), [v.axes[k] for k in order])


def tie_axis(uf: _UnionFind, v: _Val, k: int) -> None:
    """Tie the elements of ``v`` along its ``k``-th channel axis (for fixed other indices).

    The axis then never changes size at collapse: positions along it stay valid.
    """
    ids, _ = element_array(v)
    moved = np.moveaxis(ids, k, -1).reshape(-1, v.dims[k])
    for row in moved:
        for e in row[1:]:
            uf.union(int(row[0]), int(e))


def tie_all(uf: _UnionFind, elems: Sequence[int]) -> None:
    """Make ``elems`` one unit."""
    for e in elems[1:]:
        uf.union(elems[0], e)


def take(v: _Val, k: int, index: Sequence[int], keep_axis: bool) -> _Val:
    """The elements at ``index`` along the ``k``-th channel axis (dropped when not kept)."""
    ids, pos = element_array(v)
    ids, pos = np.take(ids, list(index), axis=k), np.take(pos, list(index), axis=k)
    axes = list(v.axes)
    if not keep_axis:
        ids, pos = ids.squeeze(k), pos.squeeze(k)
        dim = axes.pop(k)
        axes = [a - 1 if a > dim else a for a in axes]
    return from_arrays(v, ids, pos, axes)


def drop_axis(v: _Val, dim: int) -> _Val:
    """``v`` without channel dimension ``dim`` (a tied one: its first position stands for it).

    The other dimensions keep their numbers (the caller's output has no ``dim``).
    """
    if dim not in v.axes:
        return v
    k = v.axes.index(dim)
    ids, pos = element_array(v)
    ids, pos = np.take(ids, 0, axis=k), np.take(pos, 0, axis=k)
    return from_arrays(v, ids, pos, [a for a in v.axes if a != dim])


def drop_dim(v: _Val, dim: int) -> _Val:
    """``v`` after tensor dimension ``dim`` (not a channel axis) was removed."""
    return v.moved(tuple(a - 1 if a > dim else a for a in v.axes))


def prefix_products(shape: Shape) -> list[int]:
    out = [1]
    for d in shape:
        out.append(out[-1] * d)
    return out


@dataclass
class Reshaped:
    """A reshape's effect on a channel map.

    Attributes:
        val: the output's channel map.
        splits: element arrays of channel dimensions that the reshape split into (or merged
            from) several channel dimensions, one array per block (dimensions = the block's
            channel dimensions of size > 1), with the output dimensions of the block.
            Collapse can shrink at most one of them.
    """

    val: _Val
    splits: list[tuple[np.ndarray, list[int]]]


def _blocks(src: Shape, out: Shape) -> list[tuple[int, int, int, int]] | None:
    """``(p, q, j, k)``: src dims ``[p, q)`` hold exactly the data of out dims ``[j, k)``."""
    ps, po = prefix_products(src), prefix_products(out)
    if ps[-1] != po[-1]:
        return None
    blocks: list[tuple[int, int, int, int]] = []
    p = j = 0
    i, m = 1, 1
    while i <= len(src) or m <= len(out):
        a = ps[i] if i <= len(src) else math.inf
        b = po[m] if m <= len(out) else math.inf
        if a == b:
            # swallow trailing size-1 dims into this block on both sides
            blocks.append((p, i, j, m))
            p, j = i, m
            i, m = i + 1, m + 1
        elif a < b:
            i += 1
        else:
            m += 1
    # size-1 dims at the end of one side only
    if p < len(src) or j < len(out):
        if blocks:
            bp, _, bj, _ = blocks.pop()
            blocks.append((bp, len(src), bj, len(out)))
        else:
            blocks.append((0, len(src), 0, len(out)))
    return blocks


def _sub_array(v: _Val, dims: Sequence[int]) -> np.ndarray:
    """Element ids along the channel axes ``dims`` of ``v`` (other channel axes at 0)."""
    ids, _ = element_array(v)
    ks = [v.axes.index(d) for d in dims]
    ids = np.moveaxis(ids, ks, list(range(len(ks))))
    return np.ascontiguousarray(ids.reshape([v.dims[k] for k in ks] + [-1])[..., 0])


def reshape(v: _Val, src: Shape, out: Shape) -> Reshaped | None:
    """The channel map after reshaping a tensor of shape ``src`` to ``out`` (``None``: lost).

    Dimensions are matched in blocks with equal prefix products. A block holding channel
    dimensions keeps them row-major: a channel dimension split into several becomes several
    channel dimensions (heads and head width), channel dimensions merged (with each other or
    with spatial dimensions, whose positions repeat each channel) become one.
    """
    blocks = _blocks(src, out)
    if blocks is None or any(a >= len(src) for a in v.axes):
        return None
    v = canonical(v)
    channel = set(v.axes)
    ids, pos = element_array(v)
    full = [src[d] if d in channel else 1 for d in range(len(src))]
    target, sizes, axes = list(full), [], []
    multi: list[tuple[list[int], list[int], list[int]]] = []
    for p, q, j, k in blocks:
        if not any(d in channel for d in range(p, q)):
            sizes.extend([1] * (k - j))
            continue
        target[p:q] = src[p:q]  # spatial dims merged with channels repeat them
        sizes.extend(out[j:k])
        sub = [d for d in range(j, k) if out[d] > 1] or [j]
        axes.extend(sub)
        big = [d for d in range(p, q) if d in channel and src[d] > 1]
        if len(big) > 1 or len(sub) > 1:
            multi.append((big, sub, list(range(j, k))))
    shape = [out[a] for a in axes]
    ids = np.broadcast_to(ids.reshape(full), target).reshape(sizes).reshape(shape)
    pos = np.broadcast_to(pos.reshape(full), target).reshape(sizes).reshape(shape)
    val = from_arrays(v, ids, pos, axes)
    splits = []
    for big, sub, block in multi:
        if len(sub) > 1:
            splits.append((_sub_array(val, sub), block))
        if len(big) > 1:
            splits.append((_sub_array(v, big), block))
    return Reshaped(val, splits)


def permute(v: _Val, perm: Sequence[int]) -> _Val:
    """The channel map after ``permute(perm)`` (output dim ``i`` is input dim ``perm[i]``)."""
    where = {src: i for i, src in enumerate(perm)}
    return v.moved(tuple(where[a] for a in v.axes))
