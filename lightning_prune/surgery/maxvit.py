"""torchvision MaxViT relative attention with pruned heads: gated and compact.

torchvision's ``RelativePositionalMultiHeadAttention`` reshapes its attention output back to
its *input* width ``D`` (``out.reshape(B, G, P, D)``): with heads removed (and the embedding
kept) the reshape fails. :class:`HeadPrunedRelativeAttention` is the same module (same
parameters, buffers and ``state_dict`` keys) whose forward reshapes to ``n_heads * head_dim``
and multiplies the query, key and value rows by the gate values when it is a gate site. Gating
switches a module to it; collapse keeps it when heads were removed. The scale stays
``feat_dim ** -0.5`` of the dense layer, as torchvision computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_prune.surgery.gating import SITE_ATTR
from lightning_prune.surgery.packed_heads import register_packed_heads

__all__ = ["HeadPrunedRelativeAttention"]

try:  # torchvision is a dependency; keep the engine importable without it all the same
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
except ImportError:  # pragma: no cover
    RelativePositionalMultiHeadAttention = None

_Base: type[nn.Module] = (
    RelativePositionalMultiHeadAttention
    if RelativePositionalMultiHeadAttention is not None
    else nn.Module
)


class HeadPrunedRelativeAttention(_Base):  # type: ignore[misc, valid-type]
    """MaxViT block / grid attention whose attention width may differ from its input width."""

    def forward(self, x: Tensor) -> Tensor:
        b, g, p, _ = x.shape
        heads, head_dim = int(self.n_heads), int(self.head_dim)
        qkv = F.linear(x, self.to_qkv.weight, self.to_qkv.bias)
        site = self._modules.get(SITE_ATTR)
        if site is not None:
            qkv = qkv * site().to(qkv.dtype)
        q, k, v = (
            t.reshape(b, g, p, heads, head_dim).permute(0, 1, 3, 2, 4)
            for t in torch.chunk(qkv, 3, dim=-1)
        )
        scores = q.matmul((k * self.scale_factor).transpose(-2, -1))
        attn = F.softmax(scores + self.get_relative_positional_bias(), dim=-1)
        out = attn.matmul(v).permute(0, 1, 3, 2, 4).reshape(b, g, p, heads * head_dim)
        return self.merge(out)


def _prunable(module: nn.Module) -> bool:
    """A packed ``to_qkv`` of ``3 * n_heads * head_dim`` rows."""
    to_qkv = getattr(module, "to_qkv", None)
    heads, head_dim = getattr(module, "n_heads", None), getattr(module, "head_dim", None)
    return (
        isinstance(to_qkv, nn.Linear)
        and isinstance(heads, int)
        and isinstance(head_dim, int)
        and to_qkv.out_features == 3 * heads * head_dim
    )


if RelativePositionalMultiHeadAttention is not None:
    register_packed_heads(
        RelativePositionalMultiHeadAttention,
        HeadPrunedRelativeAttention,
        _prunable,
        "to_qkv",
        "n_heads",
    )
