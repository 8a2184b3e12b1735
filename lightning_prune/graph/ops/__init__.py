"""The operation table: channel rules by module class, callable, Tensor method and ATen op.

Importing this package registers the built-in rules (:mod:`.pointwise`, :mod:`.tensor`,
:mod:`.layers`, :mod:`.reparam`, :mod:`.cond_conv`, :mod:`.norm_act`, :mod:`.layout`,
:mod:`.attention`). Other packages add their own with :func:`register_op`.
"""

from lightning_prune.graph.ops import (
    attention,
    cond_conv,
    layers,
    layout,
    norm_act,
    pointwise,
    reparam,
    tensor,
)
from lightning_prune.graph.ops.table import OPS, Call, Op, OpTable, Rule, aten_name, register_op

__all__ = [
    "OPS",
    "Call",
    "Op",
    "OpTable",
    "Rule",
    "aten_name",
    "attention",
    "cond_conv",
    "layers",
    "layout",
    "norm_act",
    "pointwise",
    "register_op",
    "reparam",
    "tensor",
]
