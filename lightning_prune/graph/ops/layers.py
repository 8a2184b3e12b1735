"""Layers with weights (conv, linear, norms, PReLU), as module calls and as functional calls.

A call of a leaf module reads the module. A functional call (``F.conv2d(x, self.weight)``
inside a module torch.fx traces through, or the ATen op torch.export records) is the same
layer when its weight operand is the weight of a module of that layer's family: it is read
as a call of that module, so both front-ends see one layer whatever they captured, provided
the call is made by that module's own forward (elsewhere a gate attached to the module would
not see it). A functional layer with a computed weight is unknown (its channels are left as
they are).

Such a call is assumed to pass the module's own hyper-parameters (``groups``,
``num_groups``), as layers' code does, so that they follow the module when collapse resizes
it; a literal that disagrees with the module makes the call unknown, and one that only agrees
before collapse is caught by collapse's verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import nn

from lightning_prune.gates.base import ChannelGate
from lightning_prune.graph.ops.table import OPS, Call, Op, Rule, register_op

__all__ = ["conv_rule"]

_ConvNd = nn.modules.conv._ConvNd
_BatchNorm = nn.modules.batchnorm._BatchNorm
_InstanceNorm = nn.modules.instancenorm._InstanceNorm


def _unknown(call: Call) -> Op:
    return Op("unknown", list(call.values()), {"op": call.op})


def _data(call: Call) -> list[str | None]:
    return list(call.values()[:1])


@register_op(_ConvNd)
def conv_rule(call: Call) -> Op:
    """A conv module's call: its input, widths and groups."""
    conv = call.module
    assert isinstance(conv, _ConvNd)
    attrs = {
        "transposed": bool(conv.transposed),
        "groups": int(conv.groups),
        "in_channels": int(conv.in_channels),
        "out_channels": int(conv.out_channels),
        "bias": conv.bias is not None,
    }
    return Op("conv", _data(call), attrs, module=call.path)


@register_op(nn.Linear)
def _linear(call: Call) -> Op:
    linear = call.module
    assert isinstance(linear, nn.Linear)
    attrs = {"in_channels": linear.in_features, "out_channels": linear.out_features}
    return Op("linear", _data(call), attrs, module=call.path)


@register_op(_BatchNorm, _InstanceNorm, nn.GroupNorm)
def _norm(call: Call) -> Op:
    norm = call.module
    if isinstance(norm, nn.GroupNorm):
        attrs: dict[str, Any] = {"norm": "group", "num_groups": int(norm.num_groups)}
    else:
        attrs = {"norm": "batch" if isinstance(norm, _BatchNorm) else "instance"}
        attrs["num_groups"] = None
    return Op("norm", _data(call), attrs, module=call.path)


@register_op(nn.Flatten)
def _flatten(call: Call) -> Op:
    return Op("reshape", _data(call))


@register_op(nn.PReLU)
def _prelu_module(call: Call) -> Op:
    """``PReLU()`` is channel-wise; ``PReLU(C)`` too, its weight sliced with the channels."""
    prelu = call.module
    assert isinstance(prelu, nn.PReLU)
    if prelu.num_parameters != 1:
        attrs = {"channels": prelu.num_parameters, "zero_preserving": True}
        return Op("channelwise", _data(call), attrs, module=call.path)
    return Op("pointwise", _data(call), {"zero_preserving": True})


#: A gate called inside a traced model is one opaque operation (it reads no activations).
register_op(ChannelGate, leaf=True)(lambda call: Op("ignore"))


# ------------------------------------------------------------------------ functional forms
@dataclass(frozen=True)
class _Form:
    """Where a functional layer keeps its operands."""

    family: type | tuple[type, ...]
    weight: int  # position of the weight operand
    fallback: int | None = None  # position of an owned buffer when the weight is None
    groups: int | None = None  # position of the group count (conv / group norm)
    groups_name: str = "groups"
    transposed: bool | None = None  # conv: whether the op is a transposed convolution
    transposed_at: int | None = None  # conv: position of the ``transposed`` flag


def _owned(form: _Form) -> Rule:
    """The rule of a functional layer: a call of the module whose weight it uses."""

    def rule(call: Call) -> Op:
        weight = call.arg(form.weight, "weight")
        path = call.owner(weight)
        if path is None and weight is None and form.fallback is not None:
            path = call.owner(call.arg(form.fallback, "running_mean"))
        module = call.model.get_submodule(path) if path is not None else None
        module_rule = OPS.module_rule(module) if module is not None else None
        if path is None or module_rule is None or not _agrees(form, call, module):
            return _unknown(call)
        if not call.inside(path):  # the module's weights used elsewhere: its gate site
            return _unknown(call)  # (a hook on the module) would not see this call
        return module_rule(call.as_module_call(path, call.arg(0, "input")))

    return rule


def _agrees(form: _Form, call: Call, module: nn.Module | None) -> bool:
    """Whether ``module`` is of the form's family and the call uses it as the module would."""
    if module is None or not isinstance(module, form.family):
        return False
    if form.groups is not None:
        groups = call.arg(form.groups, form.groups_name, 1)
        if groups != getattr(module, "num_groups", getattr(module, "groups", 1)):
            return False
    transposed = form.transposed
    if form.transposed_at is not None:
        transposed = bool(call.arg(form.transposed_at, "transposed", False))
    return transposed is None or transposed == bool(getattr(module, "transposed", False))


_CONV = _Form(_ConvNd, 1, groups=6, transposed=False)
_CONV_T = _Form(_ConvNd, 1, groups=6, transposed=True)
_CONVOLUTION = _Form(_ConvNd, 1, groups=8, transposed_at=6)
_LINEAR = _Form(nn.Linear, 1)
_F_NORM = _Form((_BatchNorm, _InstanceNorm), 3, fallback=1)  # F.batch_norm, F.instance_norm
_ATEN_NORM = _Form((_BatchNorm, _InstanceNorm), 1, fallback=3)
_GROUP_NORM = _Form(nn.GroupNorm, 2, groups=1, groups_name="num_groups")
_NATIVE_GROUP_NORM = _Form(nn.GroupNorm, 1, groups=6, groups_name="group")

register_op("aten.conv1d", "aten.conv2d", "aten.conv3d")(_owned(_CONV))
register_op("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")(
    _owned(_CONV_T)
)
register_op("aten.convolution", "aten._convolution")(_owned(_CONVOLUTION))
register_op("aten.linear")(_owned(_LINEAR))
register_op(F.batch_norm, F.instance_norm)(_owned(_F_NORM))
register_op(
    *("aten.batch_norm", "aten.instance_norm", "aten.native_batch_norm"),
    *("aten._native_batch_norm_legit", "aten._native_batch_norm_legit_no_training"),
    "aten._native_batch_norm_legit_functional",
)(_owned(_ATEN_NORM))
register_op("aten.group_norm")(_owned(_GROUP_NORM))
register_op("aten.native_group_norm")(_owned(_NATIVE_GROUP_NORM))


@register_op("aten.prelu", "aten._prelu_kernel")
def _prelu(call: Call) -> Op:
    """``F.prelu(x, weight)``: channel-wise when ``weight`` has one value, else as its module."""
    weight = call.arg(1, "weight")
    shape = call.shape_of(weight)
    path = call.owner(weight)
    if path is not None and isinstance(call.model.get_submodule(path), nn.PReLU):
        if not call.inside(path):
            return _unknown(call)
        return _prelu_module(call.as_module_call(path, call.arg(0, "input")))
    if isinstance(shape, tuple) and all(d == 1 for d in shape):
        return Op("pointwise", _data(call), {"zero_preserving": True})
    return _unknown(call)
