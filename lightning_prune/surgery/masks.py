"""Hard masks as collapse uses them: rounded widths, and no layer left without channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from lightning_prune.gates.base import ChannelGate
from lightning_prune.surgery.state import ModuleSpec, PruneState, UnitRef


@dataclass
class EffectiveMasks:
    """Per group: units kept in the compact model, and kept-but-zeroed ("dead") units."""

    kept: list[torch.Tensor]
    dead: list[torch.Tensor]

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Concatenated kept / dead vectors (with a trailing fixed entry) and group offsets."""
        offsets = [0]
        for m in self.kept:
            offsets.append(offsets[-1] + len(m))
        kept = torch.cat([*self.kept, torch.ones(1, dtype=torch.bool)])
        dead = torch.cat([*self.dead, torch.zeros(1, dtype=torch.bool)])
        return kept, dead, offsets


def flat_index(refs: list[UnitRef], offsets: list[int]) -> torch.Tensor:
    """Indices of each channel's unit in the flat vectors (fixed channels -> the last entry)."""
    fixed = offsets[-1]
    return torch.tensor(
        [fixed if r is None else offsets[r[0]] + r[1] for r in refs], dtype=torch.long
    )


def spec_indices(state: PruneState) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    """Per module: flat unit indices of its input channels (conv role) and output channels."""
    return state.cached("flat", lambda: _spec_indices(state), dict)


def _spec_indices(state: PruneState) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
    offsets = [0]
    for g in state.groups:
        offsets.append(offsets[-1] + g.num_units)
    out: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
    for path, spec in state.modules.items():
        ins = flat_index(spec.in_units, offsets) if spec.role != "norm" and spec.in_units else None
        out[path] = (ins, flat_index(spec.out_units, offsets))
    return out


def call_spans(state: PruneState) -> list[torch.Tensor]:
    """Flat unit indices of every piece a split or slice keeps (each needs a channel)."""
    return state.cached("call spans", lambda: _call_spans(state), list)


def _call_spans(state: PruneState) -> list[torch.Tensor]:
    offsets = [0]
    for g in state.groups:
        offsets.append(offsets[-1] + g.num_units)
    return [
        flat_index(call.units[lo:hi], offsets)
        for calls in state.calls.values()
        for call in calls
        if call.units is not None
        for lo, hi in call.spans
    ]


def round_mask(mask: torch.Tensor, probs: torch.Tensor, multiple: int) -> torch.Tensor:
    """Open the most probable closed units until the kept count is a multiple of ``multiple``."""
    if multiple <= 1:
        return mask
    n = mask.numel()
    kept = int(mask.sum())
    target = min(n, -(-max(kept, 1) // multiple) * multiple)
    if target <= kept:
        return mask
    order = torch.argsort(torch.where(mask, torch.inf, probs.float()), descending=True)
    out = torch.zeros_like(mask)
    out[order[:target]] = True
    return out


def effective_masks(
    state: PruneState, gates: list[ChannelGate], round_to: int = 1
) -> EffectiveMasks:
    """Hard masks of ``gates`` as the collapsed model realises them.

    A layer may not lose all its input or output channels, nor a split or slice all the
    channels of a piece (a zero-width tensor breaks most kernels), so when every channel of a
    layer's side or a piece is closed, its most probable unit is
    kept with zeroed weights: a *dead* channel, exactly zero wherever the gate had closed it.
    """
    with torch.no_grad():
        probs = [g.probabilities().detach().float().cpu() for g in gates]
        kept = [round_mask(g.hard_mask().detach().cpu(), p, round_to) for g, p in zip(gates, probs)]
    masks = EffectiveMasks(kept, [torch.zeros_like(k) for k in kept])
    flat_kept, flat_dead, _ = masks.flat()
    flat_probs = torch.cat([*probs, torch.ones(1)])
    sides = [idx for pair in spec_indices(state).values() for idx in pair]
    for idx in [*sides, *call_spans(state)]:
        if idx is None or len(idx) == 0 or bool(flat_kept[idx].any()):
            continue
        best = int(idx[torch.argmax(flat_probs[idx])])
        flat_kept[best] = True
        flat_dead[best] = True
    sizes = [len(k) for k in kept]
    return EffectiveMasks(
        list(torch.split(flat_kept[:-1], sizes)), list(torch.split(flat_dead[:-1], sizes))
    )


def constant_role(
    role: str,
    in_idx: torch.Tensor | None,
    out_idx: torch.Tensor,
    kept: torch.Tensor,
    dead: torch.Tensor,
    in_flat: torch.Tensor | None,
    out_flat: torch.Tensor,
) -> bool:
    """Whether a sliced conv / linear computes a constant: all kept inputs or outputs are dead.

    ``role`` is a spec's role; ``"opaque"`` marks a layer with inner structure (attention)
    that is never replaced by a constant (see :func:`layer_role`).
    """
    if role not in ("conv", "grouped"):
        return False
    out_dead = dead[out_flat][out_idx]
    if len(out_dead) and bool(out_dead.all()):
        return True
    if role != "conv" or in_flat is None or in_idx is None or not len(in_idx):
        return False
    return bool(dead[in_flat][in_idx].all())


def layer_role(spec: ModuleSpec) -> str:
    """``spec.role``, or ``"opaque"`` for a layer that is never replaced by a constant."""
    return "opaque" if spec.attrs.get("opaque") else spec.role


def to_constant(module: torch.nn.Module) -> torch.nn.Module:
    """The :class:`ConstantLayer` equal to ``module`` when its input is all zeros."""
    from lightning_prune.surgery.constant import ConstantLayer

    bias = getattr(module, "bias", None)
    n = cast(int, module.out_channels if hasattr(module, "out_channels") else module.out_features)
    if isinstance(bias, torch.Tensor) and bias.ndim == 1:  # (not a mix of experts' biases)
        value = bias.detach()
    else:
        value = torch.zeros(int(n))
    return ConstantLayer.like(module, value)
