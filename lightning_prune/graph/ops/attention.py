"""Attention and layer normalisation: batched matrix products, fused attention, LayerNorm, MHA.

* ``q @ k.transpose(-2, -1)``, ``attn @ v`` (``matmul`` / ``bmm``): the analyser ties the
  contracted dimension and pairs the batch dimensions (the heads) of both operands;
* ``F.scaled_dot_product_attention(q, k, v, attn_mask)``: the same for the whole attention;
* ``LayerNorm`` (module or functional): statistics over the channels;
* ``nn.MultiheadAttention``: one operation with a packed input projection, heads and an output
  projection (a leaf: its forward is a single functional call);
* torchvision's Swin ``ShiftedWindowAttention``: the same shape of operation over windows of
  tokens (a leaf: its forward is one call of ``shifted_window_attention``, which derives the
  head width from the input width, so the analysis models it as a whole);
* torchvision's MaxViT ``RelativePositionalMultiHeadAttention``: the same over partitions
  (``(B, G, P, D)``; a leaf: its einsums and its reshape back to the input width are modelled
  as a whole).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.graph.ops.table import Call, Op, register_op

__all__ = ["layer_norm_layout"]


@register_op("aten.matmul", "aten.bmm")
def _matmul(call: Call) -> Op:
    a, b = call.arg(0, "input"), call.arg(1, "other" if call.op.endswith("matmul") else "mat2")
    return Op("matmul", [call.operand(a), call.operand(b)])


@register_op(F.scaled_dot_product_attention, "aten.scaled_dot_product_attention")
def _sdpa(call: Call) -> Op:
    q, k, v = call.arg(0, "query"), call.arg(1, "key"), call.arg(2, "value")
    mask = call.arg(3, "attn_mask")
    attrs = {"is_causal": bool(call.arg(5, "is_causal", False))}
    if call.kwargs.get("enable_gqa"):
        return Op("unknown", list(call.values()), {"op": call.op})
    return Op("attention", [call.operand(x) for x in (q, k, v, mask)], attrs)


def layer_norm_layout(module: nn.LayerNorm, shape: Any) -> str | None:
    """Which dimension ``module`` normalises, checked on a random input of the traced shape.

    ``"last"``: ``F.layer_norm`` over the trailing dimension (``nn.LayerNorm``, and subclasses
    that compute the same); ``"first"``: over dimension 1 of an NCHW tensor (channels-first
    LayerNorms); ``None``: neither, or a normalised shape of more than one dimension.
    """
    if len(module.normalized_shape) != 1 or not isinstance(shape, tuple) or len(shape) < 2:
        return None
    if type(module).forward is nn.LayerNorm.forward:
        return "last"
    weight = module.weight
    x = torch.randn(shape, device=weight.device if weight is not None else None)
    args = (module.normalized_shape, module.weight, module.bias, module.eps)
    candidates = {
        "last": lambda: F.layer_norm(x, *args),
        "first": lambda: F.layer_norm(x.movedim(1, -1), *args).movedim(-1, 1),
    }
    try:
        with torch.no_grad():
            got = module(x)
    except Exception:
        return None
    for layout, compute in candidates.items():
        try:
            with torch.no_grad():
                want = compute()
        except Exception:
            continue
        same = isinstance(got, torch.Tensor) and got.shape == want.shape
        if same and bool(torch.allclose(got, want, atol=1e-5, rtol=1e-4)):
            return layout
    return None


def _layer_norm_attrs(module: nn.LayerNorm, call: Call) -> dict[str, Any]:
    shape = tuple(int(d) for d in module.normalized_shape)
    return {
        "normalized": len(shape),
        "size": shape[-1] if shape else 1,
        "layout": layer_norm_layout(module, call.shape),
    }


@register_op(nn.LayerNorm, leaf=True)
def _layer_norm_module(call: Call) -> Op:
    module = call.module
    assert isinstance(module, nn.LayerNorm)
    return Op("layer_norm", list(call.values()[:1]), _layer_norm_attrs(module, call), call.path)


@register_op("aten.layer_norm", "aten.native_layer_norm")
def _layer_norm(call: Call) -> Op:
    """``F.layer_norm(x, normalized_shape, weight, bias)`` outside a LayerNorm module."""
    shape = call.arg(1, "normalized_shape")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
        return Op("unknown", list(call.values()), {"op": call.op})
    attrs = {"normalized": len(shape), "size": int(shape[-1]) if shape else 1, "layout": None}
    return Op("layer_norm", list(call.values()[:1]), attrs)


@register_op(nn.MultiheadAttention)
def _mha(call: Call) -> Op:
    """``nn.MultiheadAttention(query, key, value, ...)``: a leaf with its own channel rule.

    torch.fx records the module call as written; torch.export merges the module's ops into
    one call whose operands are its data inputs (its parameters are constants).
    """
    module = call.module
    assert isinstance(module, nn.MultiheadAttention)
    qkv = [call.arg(i, name) for i, name in ((0, "query"), (1, "key"), (2, "value"))]
    inputs: list[str | None]
    if all(call.is_data(x) for x in qkv):
        inputs = [call.operand(x) for x in qkv]
        masks = [call.arg(3, "key_padding_mask"), call.arg(5, "attn_mask")]
        masked = any(m is not None for m in masks)
    else:  # merged ops: one data operand per distinct input
        values = call.values()
        inputs = list((values + [values[-1]] * 3)[:3]) if values else []
        masked = len(values) > 3
    attrs = {
        "num_heads": int(module.num_heads),
        "embed_dim": int(module.embed_dim),
        "packed": bool(module._qkv_same_embed_dim),
        "extra": module.bias_k is not None or bool(module.add_zero_attn),
        "masked": masked,
    }
    return Op("mha", list(inputs), attrs, module=call.path)


@register_op("torchvision.models.swin_transformer.ShiftedWindowAttention", leaf=True)
def _swin_window_attention(call: Call) -> Op:
    """Swin window attention of torchvision, analysed as ``"mha"``.

    ``(B, H, W, C) -> (B, H, W, C)``: a packed ``qkv`` projection, heads, ``proj`` and a
    relative position bias table with one column per head. Swin V2 (cosine attention with a
    continuous position bias MLP) keeps its heads.
    """
    module = call.module
    assert module is not None
    values = call.values()
    shape = call.shape
    v2 = hasattr(module, "logit_scale")
    tokens = 0
    if isinstance(shape, tuple) and len(shape) == 4:
        wh, ww = (int(w) for w in module.window_size)  # type: ignore[union-attr]
        b, h, w = shape[:3]
        tokens = b * math.ceil(h / wh) * wh * math.ceil(w / ww) * ww  # padded to whole windows
    qkv = module.qkv
    assert isinstance(qkv, nn.Linear)
    attrs = {
        "num_heads": int(module.num_heads),  # type: ignore[arg-type]
        "embed_dim": int(qkv.in_features),
        "packed": qkv.out_features == 3 * qkv.in_features,
        "extra": v2,
        "masked": False,
        "out_proj": "proj",
        "tokens": tokens,
        "table": "relative_position_bias_table",
    }
    inputs: list[str | None] = [*values[:1]] * 3
    return Op("mha", inputs, attrs, module=call.path)


@register_op("torchvision.models.maxvit.RelativePositionalMultiHeadAttention", leaf=True)
def _maxvit_relative_attention(call: Call) -> Op:
    """MaxViT block / grid attention of torchvision, analysed as ``"mha"``.

    ``(B, G, P, D) -> (B, G, P, D)``: a packed ``to_qkv`` projection, heads, ``merge`` and a
    relative position bias table with one column per head.
    """
    module = call.module
    assert module is not None
    to_qkv = module.to_qkv
    assert isinstance(to_qkv, nn.Linear)
    heads, head_dim = int(module.n_heads), int(module.head_dim)  # type: ignore[arg-type]
    attrs = {
        "num_heads": heads,
        "embed_dim": int(to_qkv.in_features),
        "packed": to_qkv.out_features == 3 * to_qkv.in_features == 3 * heads * head_dim,
        "extra": False,
        "masked": False,
        "out_proj": "merge",
        "table": "relative_position_bias_table",
    }
    inputs: list[str | None] = [*call.values()[:1]] * 3
    return Op("mha", inputs, attrs, module=call.path)
