"""A trial collapse at augmentation: head counts that the model's code cannot change.

Removing a head changes sizes the attention module reads: collapse updates its head-count
attributes, but some modules compute the head width from their input width
(``reshape(B, N, H, C // H)``) or reshape back to it, and then no attribute change makes the
compact model run. The analysis sees this with torch.fx (the computed size is in the graph),
not with torch.export (sizes are plain integers there). So augmentation tries it: it closes
one head of every head group, collapses a copy and, when that fails, finds the groups at
fault; they are re-analysed as ungated, with a warning naming the module and the error.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_prune.errors import CollapseError
from lightning_prune.surgery.state import PruneState, gate_modules, require_state

__all__ = ["failing_head_groups"]


def _head_groups(state: PruneState) -> dict[int, str]:
    """Groups holding heads, with the module whose forward splits them."""
    found: dict[int, str] = {}
    for spec in state.modules.values():
        if spec.role != "heads":
            continue
        for ref in spec.out_units:
            if ref is not None:
                found.setdefault(ref[0], str(spec.attrs.get("scope", "")))
    return found


def _trial(model: nn.Module, groups: list[int]) -> str | None:
    """Close the last head of ``groups`` (all else open), collapse a copy: the error or None."""
    from lightning_prune.surgery.collapsing import collapse

    for i, gate in enumerate(gate_modules(model)):
        mask = torch.ones(gate.num_channels, dtype=torch.bool)
        if i in groups:
            mask[-1] = False
        gate.set_mask(mask)
    try:
        collapse(model)
    except CollapseError as err:
        cause = err.__cause__
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    return None


def failing_head_groups(model: nn.Module) -> dict[int, str]:
    """Head groups of an augmented model whose head count collapse cannot change.

    Returns:
        ``{group index: reason}`` (empty when every head group collapses); the gates are
        left as they were.
    """
    state = require_state(model, "check head groups")
    heads = _head_groups(state)
    if not heads:
        return {}
    gates = gate_modules(model)
    saved = [{k: v.clone() for k, v in g.state_dict().items()} for g in gates]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if _trial(model, list(heads)) is None:
                return {}
            failing: dict[int, str] = {}
            for group, scope in heads.items():
                error = _trial(model, [group])
                if error is not None:
                    first = error.strip().splitlines()[0] if error.strip() else error
                    failing[group] = f"`{scope}`, whose heads collapse cannot remove ({first})"
            return failing
    finally:
        for gate, values in zip(gates, saved):
            gate.load_state_dict(values)
