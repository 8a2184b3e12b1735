"""What the channel analysis knows about operations: one registry per call style.

Each entry maps a module class, a Python callable, a Tensor method name or an ATen op name to
an operation *kind* (see :class:`~lightning_prune.graph.ir.OpNode`) plus attributes. Anything
missing is ``"unknown"``: the channels it touches are left ungated, with a warning.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- module classes
#: Leaf module classes whose effect on channels is element-wise (per channel).
POINTWISE_MODULES: dict[type[nn.Module], bool] = {
    **dict.fromkeys(
        (
            nn.ReLU,
            nn.ReLU6,
            nn.LeakyReLU,
            nn.PReLU,
            nn.ELU,
            nn.CELU,
            nn.SELU,
            nn.GELU,
            nn.SiLU,
            nn.Mish,
            nn.Hardswish,
            nn.Hardtanh,
            nn.Tanh,
            nn.Softshrink,
            nn.Hardshrink,
            nn.Tanhshrink,
            nn.Identity,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
            nn.FeatureAlphaDropout,
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
            nn.Upsample,
            nn.UpsamplingNearest2d,
            nn.UpsamplingBilinear2d,
            nn.ZeroPad1d,
            nn.ZeroPad2d,
            nn.ZeroPad3d,
            nn.LPPool2d,
            nn.FractionalMaxPool2d,
            nn.ReflectionPad1d,
            nn.ReflectionPad2d,
            nn.ReplicationPad1d,
            nn.ReplicationPad2d,
        ),
        True,
    ),
    **dict.fromkeys(
        (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid, nn.ConstantPad2d),
        False,
    ),
}

# --------------------------------------------------------------------- functions and methods
_POINTWISE_FUNCS: dict[Any, bool] = {
    **dict.fromkeys(
        (
            F.relu,
            F.relu_,
            torch.relu,
            torch.relu_,
            F.relu6,
            F.leaky_relu,
            F.elu,
            F.gelu,
            F.silu,
            F.mish,
            F.hardswish,
            F.hardtanh,
            torch.tanh,
            F.tanh,
            F.dropout,
            F.dropout1d,
            F.dropout2d,
            F.dropout3d,
            F.alpha_dropout,
            F.max_pool1d,
            F.max_pool2d,
            F.max_pool3d,
            F.avg_pool1d,
            F.avg_pool2d,
            F.avg_pool3d,
            F.adaptive_avg_pool1d,
            F.adaptive_avg_pool2d,
            F.adaptive_avg_pool3d,
            F.adaptive_max_pool1d,
            F.adaptive_max_pool2d,
            F.adaptive_max_pool3d,
            F.interpolate,
            F.upsample,
            F.upsample_bilinear,
            F.upsample_nearest,
            torch.clone,
            torch.max_pool2d,
        ),
        True,
    ),
    **dict.fromkeys(
        (torch.sigmoid, F.sigmoid, F.hardsigmoid, torch.exp, F.softplus, F.logsigmoid), False
    ),
}
_POINTWISE_METHODS: dict[str, bool] = {
    **dict.fromkeys(
        (
            "relu",
            "relu_",
            "contiguous",
            "clone",
            "float",
            "double",
            "half",
            "bfloat16",
            "to",
            "type_as",
            "detach",
            "tanh",
            "tanh_",
            "cpu",
            "cuda",
        ),
        True,
    ),
    **dict.fromkeys(("sigmoid", "sigmoid_", "exp", "exp_", "hardsigmoid"), False),
}
_BINARY: dict[Any, str] = {
    operator.add: "add",
    operator.iadd: "add",
    torch.add: "add",
    operator.sub: "sub",
    operator.isub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    operator.imul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
    operator.itruediv: "div",
    torch.div: "div",
}
_BINARY_METHODS = {
    "add": "add",
    "add_": "add",
    "__add__": "add",
    "__radd__": "add",
    "__iadd__": "add",
    "sub": "sub",
    "sub_": "sub",
    "__sub__": "sub",
    "__isub__": "sub",
    "mul": "mul",
    "mul_": "mul",
    "__mul__": "mul",
    "__rmul__": "mul",
    "__imul__": "mul",
    "div": "div",
    "div_": "div",
    "__truediv__": "div",
}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE_FUNCS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_SPLIT_FUNCS = {torch.split: "split", torch.chunk: "chunk"}
_SPLIT_METHODS = {"split": "split", "chunk": "chunk"}
_IGNORED_METHODS = {"size", "dim", "numel", "__len__"}


#: Pointwise functions of other libraries, matched by ``module.qualname``.
_POINTWISE_BY_NAME: dict[str, bool] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": True,
    "timm.layers.drop.drop_path": True,
}


def pointwise_function(target: Any) -> bool | None:
    """Zero-preservation of a pointwise callable, or ``None`` if it is not pointwise."""
    found = _POINTWISE_FUNCS.get(target)
    if found is None:
        key = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
        found = _POINTWISE_BY_NAME.get(key)
    return found


def pointwise_method(name: str) -> bool | None:
    """Zero-preservation of a pointwise Tensor method, or ``None`` if it is not pointwise."""
    return _POINTWISE_METHODS.get(name)


def binary_op(target: Any, method: bool) -> str | None:
    """``"add"``, ``"sub"``, ``"mul"``, ``"div"`` or ``None``."""
    return _BINARY_METHODS.get(target) if method else _BINARY.get(target)


def is_cat(target: Any) -> bool:
    """Whether ``target`` concatenates tensors."""
    return target in _CAT


def is_reshape(target: Any, method: bool) -> bool:
    """Whether ``target`` is flatten / view / reshape."""
    return target in _RESHAPE_METHODS if method else target in _RESHAPE_FUNCS


def is_reduce(target: Any, method: bool) -> bool:
    """Whether ``target`` reduces over dimensions (mean / sum / amax)."""
    return target in _REDUCE_METHODS if method else target in _REDUCE_FUNCS


def split_op(target: Any, method: bool) -> str | None:
    """``"split"``, ``"chunk"`` or ``None``."""
    return _SPLIT_METHODS.get(target) if method else _SPLIT_FUNCS.get(target)


def is_ignored_method(name: str) -> bool:
    """Methods that only read metadata (``size``, ``dim``)."""
    return name in _IGNORED_METHODS


def pointwise_module(module: nn.Module) -> bool | None:
    """Zero-preservation of a pointwise leaf module, or ``None`` if it is not pointwise."""
    for cls in type(module).__mro__:
        if cls in POINTWISE_MODULES:
            return POINTWISE_MODULES[cls]
    return None


# ------------------------------------------------------------------------------ ATen (export)
ATEN_ZERO_PRESERVING = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "gelu",
    "silu",
    "silu_",
    "mish",
    "hardswish",
    "hardswish_",
    "hardtanh",
    "hardtanh_",
    "tanh",
    "clone",
    "_to_copy",
    "alias",
    "detach",
    "contiguous",
    "dropout",
    "feature_dropout",
    "max_pool2d",
    "max_pool1d",
    "max_pool3d",
    "avg_pool2d",
    "avg_pool1d",
    "avg_pool3d",
    "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_max_pool2d",
    "upsample_bilinear2d",
    "upsample_nearest2d",
    "upsample_bicubic2d",
    "_upsample_bilinear2d_aa",
    "to",
    "type_as",
    "lift_fresh_copy",
    "prelu",
}
ATEN_TAINTING = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "softplus"}
ATEN_TUPLE_POINTWISE = {"max_pool2d_with_indices", "adaptive_max_pool2d"}
ATEN_BINARY = {
    "add": "add",
    "add_": "add",
    "sub": "sub",
    "sub_": "sub",
    "mul": "mul",
    "mul_": "mul",
    "div": "div",
    "div_": "div",
    "rsub": "sub",
}
ATEN_RESHAPE = {"view", "reshape", "flatten", "_unsafe_view"}
ATEN_REDUCE = {"mean", "sum", "amax"}
ATEN_IGNORED = {"sym_size", "sym_numel", "sym_stride", "_assert_tensor_metadata", "empty"}
