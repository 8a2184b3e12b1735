"""Channel-analysis handlers of per-channel parameters: layer scales, biases, ``PReLU(C)``.

A parameter (or buffer) with one value per channel that multiplies, divides, shifts or
activates a tensor (``x * gamma`` with ``gamma`` shaped ``(C, 1, 1)``, ``x + bias``,
``F.prelu(x, weight)``) follows the channels it meets: it is recorded as a ``"tensor"`` (a
tensor) or ``"channels"`` (a module's per-channel weights) entry of the module map, and
collapse slices it with them. It may be read through element-wise maps and reshapes
(``gamma.view(1, -1, 1, 1)``, ``scale.exp()``): each keeps the order of its values. A
parameter whose values do not all lie along one axis is left alone (its channels are pinned).

Parameters met along other layouts (channels-last, heads of attention logits, through views,
permutes and indexing) are the ``"param"`` role of :mod:`._layout_ops`
(``_per_channel_constant``); a parameter keeps the role it was first recorded with.
"""

from __future__ import annotations

import math

from lightning_prune.graph._split_ops import _SplitOps
from lightning_prune.graph.channels import _EXCLUDED, _Val
from lightning_prune.graph.ir import OpNode


class _ParamOps(_SplitOps):
    """``_op_constant``, ``_op_channelwise`` and per-channel operands of arithmetic."""

    @property
    def _sources(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Graph value -> (qualified name, shape) of the parameter it is read from."""
        if not hasattr(self, "_param_sources"):
            self._param_sources: dict[str, tuple[str, tuple[int, ...]]] = {}
        return self._param_sources

    def _op_constant(self, node: OpNode) -> None:
        """A parameter or buffer, or a reshape / element-wise map of exactly one."""
        param = node.attrs.get("param")
        if param is not None:
            self._sources[node.name] = (param, tuple(node.attrs["param_shape"]))
        elif node.inputs and node.inputs[0] in self._sources:
            self._sources[node.name] = self._sources[node.inputs[0]]
        self.vals[node.name] = None

    def _per_channel(self, name: str, width: int, ndim: int) -> str | None:
        """The parameter ``name`` reads when it holds one value per channel, along one axis."""
        found = self._sources.get(name)
        shape = self.graph_shape(name)
        if found is None or not isinstance(shape, tuple):
            return None
        param, param_shape = found
        axis = 1 - (ndim - len(shape))
        along = [d for i, d in enumerate(shape) if d != 1 and i != axis]
        if not 0 <= axis < len(shape) or shape[axis] != width or along:
            return None
        if sorted(param_shape)[-1:] != [width] or math.prod(param_shape) != width:
            return None  # its values must lie along one axis of the parameter itself
        return param

    def _per_channel_operands(self, node: OpNode, v: _Val) -> bool:
        shape = node.shape
        assert isinstance(shape, tuple)
        width = len(v.elems)
        params = []
        for name in node.inputs:
            if name is None or self._val(name) is not None:
                continue
            if self._channel_width(name, len(shape)) == 1:
                continue
            param = self._per_channel(name, width, len(shape))
            if param is None:
                return False
            known = self.modules.get(param)
            if known is not None and known.role != "tensor":
                return False  # recorded along another layout (see _per_channel_constant)
            params.append(param)
        for param in params:
            self._follow(param, "tensor", "Parameter", v)
        return True

    def _follow(self, path: str, role: str, type_name: str, v: _Val) -> None:
        m = self._register(path, role, type_name)
        m.inputs = self._merge(m.inputs, v.elems)
        if self._excluded(path.rsplit(".", 1)[0] if role == "tensor" else path):
            self.uf.pin(v.elems, _EXCLUDED)

    def _op_channelwise(self, node: OpNode) -> None:
        """A module applying its own per-channel weights channel by channel (``PReLU(C)``)."""
        v = self._val(self._first(node))
        path = node.module or node.name
        if v is None or len(v.elems) != node.attrs.get("channels"):
            return self._unknown(node)
        self._follow(path, "channels", node.where.split(" ")[0], v)
        zero = node.attrs.get("zero_preserving", True)
        self.vals[node.name] = _Val(v.elems, v.taint if zero else [node.where] * len(v.elems))
        return None
