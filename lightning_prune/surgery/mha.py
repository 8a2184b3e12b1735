"""``nn.MultiheadAttention`` with pruned heads (and embedding channels): gated and compact.

``nn.MultiheadAttention`` requires ``num_heads * head_dim == embed_dim``: it cannot run with
fewer heads than its input width implies, and its projections are functional calls that no
hook sees. :class:`HeadPrunedMultiheadAttention` is the same module (same parameters and
``state_dict`` keys) with a forward that reads the attention width from ``in_proj_weight``
and applies gate values to the query, key and value rows when it is a gate site. Gating
switches a module to it; collapse keeps it when heads or input channels were removed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.surgery.gating import SITE_ATTR, register_fused_site
from lightning_prune.surgery.resize import Index, _set_param, _take, register_slicer
from lightning_prune.surgery.roles import PROJECTIONS

__all__ = ["HeadPrunedMultiheadAttention"]


def _merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
) -> Tensor | None:
    """Additive float mask of shape broadcastable to ``(B, H, L, S)`` (``None``: no mask)."""
    b, h, length, s = shape
    mask: Tensor | None = None
    for m in (attn_mask, key_padding_mask):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        if m is key_padding_mask or m.shape == (b, s):
            m = m.view(b, 1, 1, s)
        elif m.dim() == 3:
            m = m.view(b, h, length, s)
        mask = m if mask is None else mask + m
    return mask


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention width may differ from its embedding width.

    Packed input projection only (``kdim == vdim == embed_dim``), no ``bias_k`` / ``bias_v``
    and no zero attention: the configurations the analysis prunes.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        same = key is query and value is query
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        weight, bias = self.in_proj_weight, self.in_proj_bias
        inner = weight.shape[0] // 3
        if same:
            q, k, v = F.linear(query, weight, bias).split(inner, dim=-1)
        else:
            ws = weight.split(inner)
            bs = bias.split(inner) if bias is not None else (None, None, None)
            q, k, v = (F.linear(x, w, b) for x, w, b in zip((query, key, value), ws, bs))
        site = self._modules.get(SITE_ATTR)
        if site is not None:
            gq, gk, gv = site().to(q.dtype).split(inner)
            q, k, v = q * gq, k * gk, v * gv
        b, length, _ = q.shape
        s, h = k.shape[1], self.num_heads
        d = inner // h
        q, k, v = (t.reshape(b, -1, h, d).transpose(1, 2) for t in (q, k, v))
        mask = _merge_masks(attn_mask, key_padding_mask, (b, h, length, s), q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights: Tensor | None = None
        if need_weights:
            scores = (q * d**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                causal = torch.ones(length, s, dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(causal, float("-inf"))
            attn = scores.softmax(dim=-1)
            out = F.dropout(attn, dropout, self.training) @ v
            weights = attn.mean(dim=1) if average_attn_weights else attn
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal and mask is None
            )
        out = self.out_proj(out.transpose(1, 2).reshape(b, length, inner))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _prunable(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.MultiheadAttention)
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
    )


# kept after collapse: its projections are counted by torch.utils.flop_counter, which does not
# see nn.MultiheadAttention's fused inference path (so the compact model's count is exact)
register_fused_site(nn.MultiheadAttention, HeadPrunedMultiheadAttention, _prunable, keep=True)
PROJECTIONS[nn.MultiheadAttention] = lambda m: (m.in_proj_weight, m.in_proj_bias)


@register_slicer(nn.MultiheadAttention)
def _slice_mha(module: nn.Module, in_idx: Index, out_idx: Index) -> dict:
    """Keep the query / key / value rows of the kept heads and the kept embedding columns."""
    mha: nn.MultiheadAttention = module  # type: ignore[assignment]
    weight = mha.in_proj_weight
    rows, cols = int(weight.shape[0]), int(weight.shape[1])
    _set_param(mha, "in_proj_weight", _take(_take(weight, 0, out_idx), 1, in_idx))
    _set_param(mha, "in_proj_bias", _take(mha.in_proj_bias, 0, out_idx))
    new_rows, new_cols = (int(d) for d in mha.in_proj_weight.shape)
    heads = mha.num_heads
    mha.num_heads = new_rows // 3 // mha.head_dim
    mha.embed_dim = mha.kdim = mha.vdim = new_cols
    if mha.num_heads * mha.head_dim != new_cols or type(mha) is not nn.MultiheadAttention:
        mha.__class__ = HeadPrunedMultiheadAttention
    return {"in": [cols, new_cols], "out": [rows, new_rows], "num_heads": [heads, mha.num_heads]}
