"""Split sizes and slice bounds of a compact model: computed at collapse, kept in the plan.

A split or slice whose constants count channels (``torch.split(x, self.splits, 1)``,
``x[:, :n]``) selects, after collapse, the kept channels of the pieces it selected before: its
new sizes / bounds count the kept channels of each piece. They are installed on the module
whose forward makes the call (:func:`lightning_prune.graph.channel_args.install`), composed with
what an earlier collapse installed there, and listed in the channel plan under ``"calls"``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_prune.graph.channel_args import Entry, compose, install, installed
from lightning_prune.surgery.masks import flat_index
from lightning_prune.surgery.state import CallSpec, PruneState

__all__ = ["apply_calls", "compact_calls", "installed_calls", "plan_calls"]


def _new_args(call: CallSpec, kept: torch.Tensor, offsets: list[int]) -> tuple[int, ...] | None:
    if call.units is None:
        return None
    keep = kept[flat_index(call.units, offsets)]
    if bool(keep.all()):
        return None
    if call.key[0] == "split":
        return tuple(int(keep[lo:hi].sum()) for lo, hi in call.spans)
    lo, hi = call.spans[0]
    return int(keep[:lo].sum()), int(keep[:hi].sum())


def compact_calls(state: PruneState, kept: torch.Tensor) -> dict[str, list[Entry]]:
    """Per module path: every recorded call with its compact arguments (``None``: unchanged).

    Args:
        state: the augmented model's state.
        kept: flat kept mask of all units (dead units included), as collapse realises it.
    """
    offsets = [0]
    for g in state.groups:
        offsets.append(offsets[-1] + g.num_units)
    out: dict[str, list[Entry]] = {}
    for scope, calls in state.calls.items():
        entries = [(c.key, _new_args(c, kept, offsets)) for c in calls]
        if any(new is not None for _, new in entries):
            out[scope] = entries
    return out


def apply_calls(model: nn.Module, calls: dict[str, list[Entry]], after: bool = True) -> None:
    """Install ``calls`` on ``model``'s modules.

    Args:
        model: the model whose modules make the calls.
        calls: entries per module path.
        after: compose with what is installed there already (``False``: replace it).
    """
    for scope, entries in calls.items():
        module = model.get_submodule(scope)
        earlier = installed(module) if after else None
        install(module, entries if earlier is None else compose(earlier.entries, entries))


def installed_calls(model: nn.Module) -> dict[str, list[Entry]]:
    """What every module of ``model`` rewrites, from its code's arguments."""
    found = ((path, installed(m)) for path, m in model.named_modules())
    return {path: list(hook.entries) for path, hook in found if hook is not None}


def plan_calls(calls: dict[str, list[Entry]]) -> dict[str, list[list[Any]]]:
    """``calls`` as JSON-serialisable lists."""
    return {
        scope: [[_listed(key), None if new is None else list(new)] for key, new in entries]
        for scope, entries in calls.items()
    }


def _listed(value: Any) -> Any:
    return [_listed(v) for v in value] if isinstance(value, (list, tuple)) else value
