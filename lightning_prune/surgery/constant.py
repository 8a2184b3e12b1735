"""A layer whose every input (or output) channel is dead computes a constant: replace it.

After collapse, a conv / linear layer that reads only zeroed ("dead") channels outputs its bias
at every position (zero padding included), and one whose kept outputs are all dead outputs
zeros. :class:`ConstantLayer` produces that tensor with the layer's output geometry and no
arithmetic, so a fully closed residual branch really costs nothing.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from lightning_prune.graph.ops import Call, Op, register_op
from lightning_prune.surgery.resize import Index, register_slicer


def _pair(v: int | tuple[int, ...] | list[int], n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _at(geometry: dict[str, list[int] | str], key: str, i: int) -> int:
    """Entry ``i`` of a per-dimension geometry list (only ``padding`` may be a string)."""
    return cast("list[int]", geometry[key])[i]


class ConstantLayer(nn.Module):
    """Outputs ``value`` per channel, shaped like the output of the layer it replaces.

    Args:
        value: per-output-channel constant, shape ``[C_out]``.
        kind: ``"conv"``, ``"conv_transpose"`` or ``"linear"``.
        geometry: kernel_size, stride, padding, dilation, output_padding of a conv.
    """

    def __init__(
        self, value: torch.Tensor, kind: str, geometry: dict[str, list[int] | str]
    ) -> None:
        super().__init__()
        self.kind = kind
        self.geometry = geometry
        # a parameter: it is the layer's bias, and fine-tuning may keep adjusting it
        self.value = nn.Parameter(value.detach().clone())

    @classmethod
    def like(cls, module: nn.Module, value: torch.Tensor) -> ConstantLayer:
        """A constant layer with ``module``'s output geometry."""
        if isinstance(module, nn.Linear):
            return cls(value, "linear", {})
        conv: Any = module  # a conv, or a layer with a conv's geometry (CondConv2d)
        n = len(conv.kernel_size)
        padding = conv.padding if isinstance(conv.padding, str) else list(_pair(conv.padding, n))
        geometry = {
            "kernel_size": list(conv.kernel_size),
            "stride": list(_pair(conv.stride, n)),
            "padding": padding,
            "dilation": list(_pair(conv.dilation, n)),
            "output_padding": list(_pair(getattr(conv, "output_padding", 0), n)),
        }
        transposed = getattr(conv, "transposed", False)
        return cls(value, "conv_transpose" if transposed else "conv", geometry)

    def _spatial(self, sizes: tuple[int, ...]) -> list[int]:
        g = self.geometry
        out = []
        for i, size in enumerate(sizes):
            k, s, d = _at(g, "kernel_size", i), _at(g, "stride", i), _at(g, "dilation", i)
            if self.kind == "conv_transpose":
                p = _at(g, "padding", i)
                out.append((size - 1) * s - 2 * p + d * (k - 1) + _at(g, "output_padding", i) + 1)
            elif g["padding"] == "same":
                out.append(size)
            else:
                p = 0 if g["padding"] == "valid" else _at(g, "padding", i)
                out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return out

    def forward(self, x: torch.Tensor, *rest: Any) -> torch.Tensor:
        """The constant, shaped like the replaced layer's output for input ``x``.

        Further operands of the replaced layer (a conditional conv's routing weights) are
        accepted and unused.
        """
        if self.kind == "linear":
            shape = [*x.shape[:-1], self.value.numel()]
            return self.value.to(x.dtype).expand(shape).clone(memory_format=torch.contiguous_format)
        spatial = self._spatial(tuple(x.shape[2:]))
        view = self.value.to(x.dtype).view(1, -1, *([1] * len(spatial)))
        out = view.expand(x.shape[0], self.value.numel(), *spatial)
        return out.clone(memory_format=torch.contiguous_format)  # a new tensor, not a view

    def extra_repr(self) -> str:
        return f"channels={self.value.numel()}, kind={self.kind}"


@register_op(ConstantLayer, leaf=True)
def _constant_channels(call: Call) -> Op:
    """A constant layer produces its channels from nothing: a producer without inputs."""
    layer = call.module
    assert isinstance(layer, ConstantLayer)
    attrs = {"out_channels": layer.value.numel(), "axis": -1 if layer.kind == "linear" else 1}
    return Op("source", [], attrs, module=call.path)


@register_slicer(ConstantLayer)
def _slice_constant(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    layer: ConstantLayer = module  # type: ignore[assignment]
    c = layer.value.numel()
    if out_idx is not None:
        value = layer.value.detach().index_select(0, out_idx.to(layer.value.device)).clone()
        layer.value = nn.Parameter(value, requires_grad=layer.value.requires_grad)
    return {"out": [c, layer.value.numel()]}


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` wherever the module at ``path`` is referenced inside ``model``."""
    old = model.get_submodule(path)
    for module in list(model.modules()):
        for child_name, child in list(module._modules.items()):
            if child is old:
                module._modules[child_name] = new
