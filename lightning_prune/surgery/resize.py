"""Slicing layers to kept channels, one function per layer family (a registry by class)."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

Index = torch.Tensor | None  # kept channel indices (None: unchanged)
Slicer = Callable[[nn.Module, Index, Index], dict]

_SLICERS: dict[type[nn.Module] | str, Slicer] = {}


def register_slicer(*classes: type[nn.Module] | str) -> Callable[[Slicer], Slicer]:
    """Register a function slicing modules of ``classes`` (and their subclasses).

    A class may be given by its dotted qualified name (classes of optional libraries).
    """

    def deco(fn: Slicer) -> Slicer:
        for cls in classes:
            _SLICERS[cls] = fn
        return fn

    return deco


def get_slicer(module: nn.Module) -> Slicer:
    """The slicer for ``module``'s class (looked up along its MRO)."""
    for cls in type(module).__mro__:
        found = _SLICERS.get(cls) or _SLICERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    raise TypeError(f"lightning_prune cannot resize {type(module).__name__} layers.")


def _take(t: torch.Tensor | None, dim: int, idx: Index) -> torch.Tensor | None:
    """``t`` indexed along ``dim``; an index of -1 gives a zero entry (channel padding)."""
    if t is None or idx is None:
        return t
    source = t.detach()
    idx = idx.to(t.device)
    if bool((idx < 0).any()):
        zero = source.new_zeros((*source.shape[:dim], 1, *source.shape[dim + 1 :]))
        source = torch.cat([source, zero], dim)
        idx = torch.where(idx < 0, source.shape[dim] - 1, idx)
    return source.index_select(dim, idx).clone()


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    old = getattr(module, name)
    if value is None or old is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


@register_slicer(nn.modules.conv._ConvNd)
def slice_conv(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    """Slice a conv (transposed and grouped too) to its kept input and output channels."""
    conv: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
    g = conv.groups
    cin, cout = conv.in_channels, conv.out_channels
    new_in = cin if in_idx is None else len(in_idx)
    new_out = cout if out_idx is None else len(out_idx)
    w: torch.Tensor | None = conv.weight
    if g == 1:
        if conv.transposed:
            w = _take(_take(w, 0, in_idx), 1, out_idx)
        else:
            w = _take(_take(w, 0, out_idx), 1, in_idx)
        new_g = 1
    else:  # whole blocks kept: slice the grouped axis only
        new_g = new_in // (cin // g)
        w = _take(w, 0, in_idx) if conv.transposed else _take(w, 0, out_idx)
    _set_param(conv, "weight", w)
    _set_param(conv, "bias", _take(conv.bias, 0, out_idx))
    conv.in_channels, conv.out_channels, conv.groups = new_in, new_out, new_g
    return {"in": [cin, new_in], "out": [cout, new_out], "groups": [g, new_g]}


@register_slicer(nn.Linear)
def _slice_linear(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    lin: nn.Linear = module  # type: ignore[assignment]
    fin, fout = lin.in_features, lin.out_features
    _set_param(lin, "weight", _take(_take(lin.weight, 0, out_idx), 1, in_idx))
    _set_param(lin, "bias", _take(lin.bias, 0, out_idx))
    lin.in_features = fin if in_idx is None else len(in_idx)
    lin.out_features = fout if out_idx is None else len(out_idx)
    return {"in": [fin, lin.in_features], "out": [fout, lin.out_features]}


@register_slicer(nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
def _slice_norm(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    bn: nn.modules.batchnorm._NormBase = module  # type: ignore[assignment]
    c = bn.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        _set_param(bn, name, _take(getattr(bn, name), 0, out_idx))
    bn.num_features = c if out_idx is None else len(out_idx)
    return {"out": [c, bn.num_features]}


@register_slicer(nn.GroupNorm)
def _slice_groupnorm(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    gn: nn.GroupNorm = module  # type: ignore[assignment]
    c, g = gn.num_channels, gn.num_groups
    for name in ("weight", "bias"):
        _set_param(gn, name, _take(getattr(gn, name), 0, out_idx))
    gn.num_channels = c if out_idx is None else len(out_idx)
    gn.num_groups = gn.num_channels // (c // g)
    return {"out": [c, gn.num_channels], "num_groups": [g, gn.num_groups]}


@register_slicer(nn.PReLU)
def _slice_prelu(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    prelu: nn.PReLU = module  # type: ignore[assignment]
    c = prelu.num_parameters
    _set_param(prelu, "weight", _take(prelu.weight, 0, out_idx))
    prelu.num_parameters = c if out_idx is None else len(out_idx)
    return {"out": [c, prelu.num_parameters]}


def zero_channels(module: nn.Module, out_idx: torch.Tensor) -> None:
    """Make the given output channels of ``module`` exactly zero (weights, biases, values)."""
    with torch.no_grad():
        if isinstance(module, nn.modules.conv._ConvNd) and module.transposed and module.groups == 1:
            module.weight[:, out_idx] = 0
        elif getattr(module, "weight", None) is not None:
            cast(torch.Tensor, module.weight)[out_idx] = 0
        for name in ("bias", "value"):  # ``value``: a ConstantLayer's per-channel output
            if isinstance(getattr(module, name, None), torch.Tensor):
                cast(torch.Tensor, getattr(module, name))[out_idx] = 0
