"""Compact forms of attention modules whose code derives the head width from the input width.

Some attention modules compute their head width as ``C // num_heads`` from the input width
``C`` and reshape the heads' output back to ``C`` (SegFormer's efficient self-attention in
segmentation-models-pytorch and timm's ``mit`` encoders). With heads removed and the
embedding kept, no attribute change makes that code run. A compact form is a subclass with
the same parameters and ``state_dict`` keys whose forward reads the attention width from its
projection weights; collapse switches a module to it when it removed heads, and the channel
plan records the switch by name (``"form"``), so a fresh model is switched the same way.

Forms are registered by the original class's qualified name (optional libraries are imported
only when their module is met).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import PlanMismatchError
from lightning_prune.surgery.roles import PLAN_KEYS

__all__ = ["FORMS", "compact_form", "register_form", "to_compact_form"]

Forward = Callable[..., Any]
#: qualified name of an attention class -> the forward of its compact form
FORMS: dict[str, Forward] = {}
_BUILT: dict[type, type] = {}


def register_form(qualname: str) -> Callable[[Forward], Forward]:
    """Register ``forward`` as the compact form's forward of the class named ``qualname``."""

    def deco(forward: Forward) -> Forward:
        FORMS[qualname] = forward
        return forward

    return deco


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def compact_form(module: nn.Module) -> tuple[str, type] | None:
    """``(registered name, compact class)`` for ``module``'s class, or ``None``."""
    cls = type(module)
    if cls in _BUILT.values():
        return None  # already compact
    for base in cls.__mro__:
        forward = FORMS.get(_qualname(base))
        if forward is not None:
            if cls not in _BUILT:
                _BUILT[cls] = type(f"HeadPruned{cls.__name__}", (cls,), {"forward": forward})
            return _qualname(base), _BUILT[cls]
    return None


def to_compact_form(module: nn.Module) -> str | None:
    """Switch ``module`` to its compact form; the registered name, or ``None`` if it has none."""
    found = compact_form(module)
    if found is None:
        return None
    module.__class__ = found[1]
    return found[0]


def _apply_form(model: nn.Module, path: str, name: str) -> None:
    module = model.get_submodule(path)
    found = compact_form(module)
    if found is None or found[0] != name:
        raise PlanMismatchError(
            f"The channel plan switches `{path}` to the compact form of {name}, but the model "
            f"has {type(module).__name__} there."
        )
    module.__class__ = found[1]


PLAN_KEYS["form"] = _apply_form


@register_form("segmentation_models_pytorch.encoders.mix_transformer.Attention")
def _mix_attention(self: Any, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SegFormer's efficient self-attention, head width read from ``q``'s weight."""
    b, n, c = x.shape
    heads = int(self.num_heads)
    inner = int(self.q.weight.shape[0])
    q = self.q(x).reshape(b, n, heads, inner // heads).transpose(1, 2)
    source = x
    if self.sr_ratio > 1:  # keys and values from a spatially reduced map
        grid = x.transpose(1, 2).reshape(b, c, height, width)
        source = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
    kv = self.kv(source).reshape(b, -1, 2, heads, inner // heads).permute(2, 0, 3, 1, 4)
    attn = self.attn_drop(((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1))
    out = (attn @ kv[1]).transpose(1, 2).reshape(b, n, inner)
    return self.proj_drop(self.proj(out))
