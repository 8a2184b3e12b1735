"""torchvision Swin window attention with pruned heads: gated and compact.

torchvision's ``ShiftedWindowAttention`` calls ``shifted_window_attention``, which computes
the head width as ``C // num_heads`` from its input width ``C``: with heads removed (and the
embedding kept) it would split the remaining query / key / value rows wrongly.
:class:`HeadPrunedShiftedWindowAttention` is the same module (same parameters, buffers and
``state_dict`` keys) whose forward reads the attention width from ``qkv`` and multiplies the
query, key and value rows by the gate values when it is a gate site. Gating switches a module
to it; collapse keeps it when heads were removed. Swin V2's attention keeps its heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.surgery.gating import SITE_ATTR
from lightning_prune.surgery.packed_heads import register_packed_heads

__all__ = ["HeadPrunedShiftedWindowAttention", "window_partition", "window_reverse"]

try:  # torchvision is a dependency; keep the engine importable without it all the same
    from torchvision.models.swin_transformer import ShiftedWindowAttention
except ImportError:  # pragma: no cover
    ShiftedWindowAttention = None


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """``(B, H, W, C)`` (``H``, ``W`` multiples of the window) -> ``(B * windows, wh * ww, C)``."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, c)


def window_reverse(x: Tensor, window: tuple[int, int], b: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * windows, wh * ww, C)`` -> ``(B, H, W, C)``."""
    wh, ww = window
    x = x.view(b, h // wh, w // ww, wh, ww, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _shift_mask(
    size: tuple[int, int], window: tuple[int, int], shift: list[int], like: Tensor
) -> Tensor:
    """Additive mask ``(windows, N, N)``: -100 between tokens from different shifted regions."""
    region = like.new_zeros(size)
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    label = 0
    for top, bottom in bounds[0]:
        for left, right in bounds[1]:
            region[top:bottom, left:right] = label
            label += 1
    ids = window_partition(region[None, :, :, None], window).squeeze(-1)  # (windows, N)
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros_like(differs, dtype=like.dtype).masked_fill(differs, -100.0)


_Base: type[nn.Module] = ShiftedWindowAttention if ShiftedWindowAttention is not None else nn.Module


class HeadPrunedShiftedWindowAttention(_Base):  # type: ignore[misc, valid-type]
    """Swin (V1) window attention whose attention width may differ from its embedding width."""

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        wh, ww = (int(s) for s in self.window_size)
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        hp, wp = int(x.shape[1]), int(x.shape[2])
        shift = [s if win < p else 0 for s, win, p in zip(self.shift_size, (wh, ww), (hp, wp))]
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        tokens = window_partition(x, (wh, ww))
        qkv = F.linear(tokens, self.qkv.weight, self.qkv.bias)
        site = self._modules.get(SITE_ATTR)
        if site is not None:
            qkv = qkv * site().to(qkv.dtype)
        heads = int(self.num_heads)
        inner = qkv.shape[-1] // 3
        n = tokens.shape[1]
        q, k, v = qkv.reshape(tokens.shape[0], n, 3, heads, inner // heads).permute(2, 0, 3, 1, 4)
        attn = (q * (inner // heads) ** -0.5).matmul(k.transpose(-2, -1))
        attn = attn + self.get_relative_position_bias()
        if sum(shift) > 0:
            mask = _shift_mask((hp, wp), (wh, ww), shift, x)
            attn = attn.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attention_dropout, training=self.training)
        out = attn.matmul(v).transpose(1, 2).reshape(tokens.shape[0], n, inner)
        out = F.dropout(self.proj(out), p=self.dropout, training=self.training)  # may be constant
        x = window_reverse(out, (wh, ww), b, hp, wp)
        if sum(shift) > 0:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


def _prunable(module: nn.Module) -> bool:
    """V1 attention with a packed ``qkv`` (V2's cosine attention keeps its heads)."""
    qkv = getattr(module, "qkv", None)
    return (
        not hasattr(module, "logit_scale")
        and isinstance(qkv, nn.Linear)
        and qkv.out_features == 3 * qkv.in_features
    )


if ShiftedWindowAttention is not None:
    register_packed_heads(
        ShiftedWindowAttention, HeadPrunedShiftedWindowAttention, _prunable, "qkv", "num_heads"
    )
