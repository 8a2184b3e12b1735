"""Per-channel parameters that are not a layer's (a layer scale ``gamma``, a ``bias`` tensor).

The channel analysis records such a tensor by its qualified name (role ``"param"``) when it
holds one value per channel along a single axis; collapse slices it along that axis with the
channels it meets.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["channel_axis", "get_tensor", "slice_tensor"]


def get_tensor(model: nn.Module, qualified: str) -> torch.Tensor:
    """The parameter or buffer of ``model`` named ``qualified``."""
    owner, _, name = qualified.rpartition(".")
    value = getattr(model.get_submodule(owner), name, None)
    if not isinstance(value, torch.Tensor):
        raise AttributeError(f"{type(model).__name__} has no tensor `{qualified}`")
    return value


def channel_axis(tensor: torch.Tensor) -> int:
    """The axis holding a per-channel tensor's values (its only axis longer than 1)."""
    longer = [i for i, d in enumerate(tensor.shape) if d != 1]
    return longer[0] if longer else 0


def slice_tensor(model: nn.Module, qualified: str, idx: torch.Tensor | None) -> dict:
    """Keep the channels ``idx`` of the per-channel tensor ``qualified`` (in place).

    Returns:
        The plan entry: ``{"type": "Parameter", "out": [old width, new width]}``.
    """
    value = get_tensor(model, qualified)
    axis = channel_axis(value)
    width = int(value.shape[axis])
    if idx is not None:
        new = value.detach().index_select(axis, idx.to(value.device)).clone()
        owner, _, name = qualified.rpartition(".")
        module = model.get_submodule(owner)
        if isinstance(value, nn.Parameter):
            setattr(module, name, nn.Parameter(new, requires_grad=value.requires_grad))
        else:
            setattr(module, name, new)
    return {"type": "Parameter", "out": [width, width if idx is None else len(idx)]}
