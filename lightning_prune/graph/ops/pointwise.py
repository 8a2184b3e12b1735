"""Channel-wise operations: activations, pools, resampling, dropout, padding, dtype casts.

Each acts on every channel separately, so it keeps the channel map of its input. It is
*zero-preserving* when a channel that is zero everywhere stays zero (``relu``, pools,
zero padding); otherwise (``sigmoid``, ``exp``) the channels of a closed unit no longer read
zero after it, and a layer consuming them pins them. ATen ops tagged pointwise that are not
listed here are treated as channel-wise but not zero-preserving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import nn

from lightning_prune.graph.ops.table import Call, Op, Rule, register_op

__all__ = ["pointwise_rule"]

#: ATen ops (and the torch functions / Tensor methods of the same name) that keep zeros.
ZERO_PRESERVING_OPS = (
    *("relu", "relu6", "leaky_relu", "rrelu", "rrelu_with_noise", "elu", "celu", "selu"),
    *("gelu", "silu", "mish", "hardswish", "tanh", "softshrink", "hardshrink", "abs", "neg"),
    *("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout"),
    *("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices"),
    *("max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d"),
    *("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d"),
    *("_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d"),
    *("adaptive_max_pool2d", "adaptive_max_pool3d", "fractional_max_pool2d"),
    *("fractional_max_pool3d", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d"),
    *("_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d"),
    *("upsample_linear1d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d"),
    *("_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa"),
    *("reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d"),
    *("replication_pad2d", "replication_pad3d"),
    *("clone", "contiguous", "detach", "alias", "_to_copy", "to", "type_as", "lift_fresh_copy"),
    *("cpu", "cuda"),
)
#: ATen ops that act per channel but turn zeros into something else.
TAINTING_OPS = ("sigmoid", "hardsigmoid", "softplus", "log_sigmoid", "exp")
#: Tensor methods with no ATen op of the same name.
ZERO_PRESERVING_METHODS = ("float", "double", "half", "bfloat16", "type")
#: Python functions that are not ATen ops (or whose arguments differ from the ATen op's).
ZERO_PRESERVING_FUNCTIONS: tuple[Any, ...] = (
    *(F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest),
    *(F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout),
    *(F.tanhshrink, F.lp_pool1d, F.lp_pool2d, F.lp_pool3d),
    "torchvision.ops.stochastic_depth.stochastic_depth",
    "timm.layers.drop.drop_path",
)
ZERO_PRESERVING_MODULES = (
    *(nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU),
    *(nn.Mish, nn.Hardswish, nn.Tanh, nn.Softshrink, nn.Hardshrink, nn.Tanhshrink, nn.Identity),
    *(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
    *(nn.FeatureAlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d),
    *(nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
    *(nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
    *(nn.LPPool1d, nn.LPPool2d, nn.LPPool3d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d),
    *(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d),
    *(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d),
    *(nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d),
    *(nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d),
)
TAINTING_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)


def pointwise_rule(zero_preserving: bool) -> Rule:
    """A rule for a channel-wise operation on its first data operand.

    A tuple output (a max pool's values and indices) passes the channels to its first item.
    """

    def rule(call: Call) -> Op:
        inputs: list[str | None] = list(call.values()[:1])
        if isinstance(call.shape, list):
            return Op("split", inputs, {"dim": -1, "same": True})
        return Op("pointwise", inputs, {"zero_preserving": zero_preserving})

    return rule


_zero = pointwise_rule(True)
_taint = pointwise_rule(False)
register_op(
    *ZERO_PRESERVING_MODULES,
    *ZERO_PRESERVING_FUNCTIONS,
    *(f"aten.{name}" for name in ZERO_PRESERVING_OPS),
    *(f"Tensor.{name}" for name in ZERO_PRESERVING_METHODS),
)(_zero)
register_op(*TAINTING_MODULES, *(f"aten.{name}" for name in TAINTING_OPS))(_taint)


@register_op("aten.<pointwise>")
def _generic(call: Call) -> Op:
    """Any other ATen op tagged pointwise: channel-wise on a single data operand."""
    values = call.values()
    if len(values) != 1 or isinstance(call.shape, list):
        return Op("unknown", list(values), {"op": call.op})
    return _taint(call)


def _keeps_zero(low: Any, high: Any) -> bool:
    below = low is None or (isinstance(low, (int, float)) and low <= 0)
    above = high is None or (isinstance(high, (int, float)) and high >= 0)
    return below and above


@register_op("aten.hardtanh")
def _hardtanh(call: Call) -> Op:
    """``hardtanh(x, min_val, max_val)``: zero-preserving when ``min_val <= 0 <= max_val``."""
    low, high = call.arg(1, "min_val", -1.0), call.arg(2, "max_val", 1.0)
    return pointwise_rule(_keeps_zero(low, high))(call)


@register_op("aten.clamp", "aten.clip")
def _clamp(call: Call) -> Op:
    """``clamp(x, min, max)``: zero-preserving when ``min <= 0 <= max``."""
    return pointwise_rule(_keeps_zero(call.arg(1, "min"), call.arg(2, "max")))(call)


@register_op(nn.Hardtanh)
def _hardtanh_module(call: Call) -> Op:
    module = call.module
    assert isinstance(module, nn.Hardtanh)
    return pointwise_rule(_keeps_zero(module.min_val, module.max_val))(call)


def _pad_rule(pad: Sequence[int] | None, ndim: int, zero: bool, call: Call) -> Op:
    """Padding is channel-wise unless it pads the channel dimension (``dims``: padded ones)."""
    if not isinstance(pad, Sequence) or len(pad) > 2 * ndim or len(pad) % 2:
        return Op("unknown", list(call.values()), {"op": call.op})
    if not all(isinstance(p, int) for p in pad):
        return Op("unknown", list(call.values()), {"op": call.op})
    dims = [ndim - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]]
    op = pointwise_rule(zero)(call)
    op.attrs["dims"] = dims
    return op


@register_op("aten.pad")
def _pad(call: Call) -> Op:
    """``F.pad(x, pad, mode, value)``: zero-preserving unless it pads with a non-zero value."""
    shape = call.shape_of(call.arg(0, "input"))
    mode, value = call.arg(2, "mode", "constant"), call.arg(3, "value")
    zero = mode != "constant" or not value
    return _pad_rule(call.arg(1, "pad"), len(shape) if isinstance(shape, tuple) else 0, zero, call)


@register_op("aten.constant_pad_nd")
def _constant_pad(call: Call) -> Op:
    shape = call.shape_of(call.arg(0, "input"))
    zero = not call.arg(2, "value", 0)
    return _pad_rule(call.arg(1, "pad"), len(shape) if isinstance(shape, tuple) else 0, zero, call)


@register_op(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
def _constant_pad_module(call: Call) -> Op:
    module = call.module
    assert isinstance(module, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d))
    return pointwise_rule(not module.value)(call)
