"""FLOPs and parameter counts: exact (``torch.utils.flop_counter``) and relaxed (differentiable).

The relaxed cost of an augmented model follows paper 1: a conv's FLOPs scale with the sum of
its input gates times the sum of its output gates, ``F * (S_in / C_in) * (S_out / C_out)``;
grouped / depthwise convs and norms scale with their output gates only. At hard 0/1 gates it
equals the collapsed model's count. Pure functions of the model's gates and its recorded state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_prune.counting import count_flops, count_params, module_flops
from lightning_prune.surgery.masks import (
    constant_role,
    effective_masks,
    layer_role,
    spec_indices,
)
from lightning_prune.surgery.state import PruneState, gate_modules, require_state

__all__ = [
    "count_flops",
    "count_params",
    "dense_cost",
    "hard_cost",
    "module_flops",
    "relaxed_cost",
]

CostKind = str  # "flops" | "params"
_KINDS = ("flops", "params")


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")


def dense_cost(model: nn.Module, kind: CostKind = "flops") -> float:
    """Cost of the augmented model with every gate open (for its example input)."""
    _check_kind(kind)
    state = require_state(model, "compute a cost")
    return state.dense_flops if kind == "flops" else state.dense_params


class _CostIndex:
    """Gather indices that turn the concatenated unit values into per-module widths."""

    def __init__(self, state: PruneState, device: torch.device) -> None:
        offsets, total = [], 0
        for g in state.groups:
            offsets.append(total)
            total += g.num_units
        fixed = total  # index of a constant 1
        specs = list(state.modules.values())
        in_idx, in_seg, out_idx, out_seg = [], [], [], []
        for m, spec in enumerate(specs):
            for ref in (spec.in_units or []) if spec.role == "conv" else []:
                in_idx.append(fixed if ref is None else offsets[ref[0]] + ref[1])
                in_seg.append(m)
            for ref in spec.out_units:
                out_idx.append(fixed if ref is None else offsets[ref[0]] + ref[1])
                out_seg.append(m)
        n = len(specs)

        def t(x: Sequence[float], dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype, device=device)

        self.n = n
        self.in_idx, self.in_seg = t(in_idx), t(in_seg)
        self.out_idx, self.out_seg = t(out_idx), t(out_seg)
        c_in = [len(s.in_units or []) if s.role == "conv" else 1 for s in specs]
        has_in = [1.0 if s.role == "conv" else 0.0 for s in specs]
        self.c_in = t(c_in, torch.float32)
        self.no_in = t([1.0 - h for h in has_in], torch.float32)
        self.c_out = t([len(s.out_units) for s in specs], torch.float32)
        self.flops = t([s.flops for s in specs], torch.float64)
        self.wparams = t([s.weight_params for s in specs], torch.float64)
        self.bparams = t([s.bias_params for s in specs], torch.float64)
        self.const_flops = state.dense_flops - float(self.flops.sum())
        self.const_params = state.dense_params - float(self.wparams.sum() + self.bparams.sum())


def _index(state: PruneState, device: torch.device) -> _CostIndex:
    return state.cached(f"cost:{device}", lambda: _CostIndex(state, device), _CostIndex)


def _cost_from_values(
    state: PruneState, values: list[torch.Tensor], kind: CostKind
) -> torch.Tensor:
    device = values[0].device
    idx = _index(state, device)
    flat = torch.cat([v.float() for v in values] + [torch.ones(1, device=device)])
    s_in = torch.zeros(idx.n, device=device).index_add(0, idx.in_seg, flat[idx.in_idx])
    s_out = torch.zeros(idx.n, device=device).index_add(0, idx.out_seg, flat[idx.out_idx])
    f_in = s_in / idx.c_in + idx.no_in
    f_out = s_out / idx.c_out
    if kind == "flops":
        return idx.const_flops + (idx.flops * (f_in * f_out).double()).sum()
    scaled = idx.wparams * (f_in * f_out).double() + idx.bparams * f_out.double()
    return idx.const_params + scaled.sum()


def relaxed_cost(
    model: nn.Module,
    kind: CostKind = "flops",
    values: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Differentiable cost of an augmented model from its gates' keep-probabilities.

    Args:
        model: an augmented model.
        kind: ``"flops"`` or ``"params"``.
        values: per-gate unit values to use instead of the keep-probabilities (e.g. the hard
            masks as floats, to evaluate the formula at 0/1 gates).

    Returns:
        A float64 scalar tensor in the units of :func:`dense_cost` (FLOPs of the example input,
        or parameters). Divide by :func:`dense_cost` for a ratio.
    """
    _check_kind(kind)
    state = require_state(model, "compute a relaxed cost")
    gates = gate_modules(model)
    if values is None:
        values = [g.probabilities() for g in gates]
    elif [v.numel() for v in values] != [g.num_channels for g in gates]:
        raise ValueError(
            f"values must hold one tensor per gate with its number of units "
            f"({[g.num_channels for g in gates]}), got {[v.numel() for v in values]}."
        )
    return _cost_from_values(state, list(values), kind)


def hard_cost(model: nn.Module, kind: CostKind = "flops") -> float:
    """Cost of the network that :func:`~lightning_prune.collapse` would return now.

    Mirrors collapse exactly (its dead channels and constant layers included), so it equals
    ``count_flops`` / ``count_params`` of the collapsed model.
    """
    _check_kind(kind)
    state = require_state(model, "compute a hard cost")
    masks = effective_masks(state, gate_modules(model))
    kept, dead, _ = masks.flat()
    total = state.dense_flops if kind == "flops" else state.dense_params
    for path, (in_flat, out_flat) in spec_indices(state).items():
        spec = state.modules[path]
        out_idx = torch.nonzero(kept[out_flat]).flatten()
        in_idx = None if in_flat is None else torch.nonzero(kept[in_flat]).flatten()
        f_out = len(out_idx) / len(out_flat)
        f_in = (
            1.0
            if in_idx is None or in_flat is None or spec.role != "conv"
            else len(in_idx) / len(in_flat)
        )
        dense = spec.flops if kind == "flops" else spec.weight_params + spec.bias_params
        if constant_role(layer_role(spec), in_idx, out_idx, kept, dead, in_flat, out_flat):
            now = 0.0 if kind == "flops" else float(len(out_idx))  # ConstantLayer.value
        elif kind == "flops":
            now = spec.flops * f_in * f_out
        else:
            now = spec.weight_params * f_in * f_out + spec.bias_params * f_out
        total += now - dense
    return float(total)
