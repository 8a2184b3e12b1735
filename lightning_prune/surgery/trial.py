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
from lightning_prune.surgery.gating import ORIGINAL_CLASS
from lightning_prune.surgery.state import PruneState, gate_modules, require_state

__all__ = ["failing_head_groups"]


def _head_groups(state: PruneState) -> dict[int, str]:
    """Groups to try, with the module whose code must cope with fewer channels.

    Groups holding heads (the module whose forward splits them), groups whose width a
    module reads (``reshape(B, self.hidden_dim, -1)``) and embedding groups (normalised by a
    LayerNorm site, see ``embedding="renormalize"``).
    """
    found: dict[int, str] = {}
    for spec in state.modules.values():
        if spec.role == "heads":
            scope = str(spec.attrs.get("scope", ""))
        elif spec.role == "norm" and "layer_norm" in spec.attrs:
            scope = spec.path
        else:
            continue
        for ref in spec.out_units:
            if ref is not None:
                found.setdefault(ref[0], scope)
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
        return str(getattr(err, "failure", err))
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
            # one verdict per attention class: its code computes the sizes the same way
            by_type: dict[str, list[int]] = {}
            for group, scope in heads.items():
                module = model.get_submodule(scope)
                name = module.__dict__.get(ORIGINAL_CLASS, type(module)).__name__
                by_type.setdefault(name, []).append(group)
            failing: dict[int, str] = {}
            for name, groups in by_type.items():
                error = _trial(model, groups)
                if error is None:
                    continue
                first = (error.strip().splitlines() or [""])[0]
                example = heads[groups[0]]
                reason = (
                    f"{name} modules (e.g. `{example}`), whose code cannot run with fewer "
                    f"channels (a trial collapse failed: {first})"
                )
                failing.update({group: reason for group in groups})
            return failing
    finally:
        for gate, values in zip(gates, saved):
            gate.load_state_dict(values)
