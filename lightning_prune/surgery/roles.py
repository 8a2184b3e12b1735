"""Extension points of augmentation, collapse and the channel plan, by analysis role.

The conv / norm / grouped / source roles of :class:`~lightning_prune.graph.ModuleChannels`
are layers sliced by :func:`~lightning_prune.surgery.resize.get_slicer`. Other roles are not
layers: a parameter used per channel (``"param"``), an operation whose FLOPs follow the
channels (``"op"``), a reshape into heads whose sizes a module reads (``"heads"``). Each
registers how its :class:`~lightning_prune.surgery.state.ModuleSpec` is built, what collapse
does with it, and how a plan entry key it writes is re-applied to a fresh model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_prune.graph.channels import ModuleChannels
from lightning_prune.graph.ir import Graph
from lightning_prune.surgery.state import ModuleSpec, UnitRef

__all__ = [
    "COLLAPSERS",
    "FINISHERS",
    "PLAN_KEYS",
    "PROJECTIONS",
    "SPEC_BUILDERS",
    "merge_entry",
    "projection",
]

#: ``build(channels, out_refs, model, graph) -> ModuleSpec`` by role.
SpecBuilder = Callable[[ModuleChannels, list[UnitRef], nn.Module, Graph], ModuleSpec]
#: ``collapse(model, spec, kept) -> (module path, plan entry fragment)`` by role; ``kept``
#: holds the positions of the kept channels among ``spec.out_units``.
Collapser = Callable[[nn.Module, ModuleSpec, torch.Tensor], "tuple[str, dict[str, Any]] | None"]
#: ``finish(model, path, entry)``: runs once per plan entry after every spec was collapsed.
Finisher = Callable[[nn.Module, str, dict[str, Any]], None]
#: ``apply(model, path, value)``: re-applies plan entry key ``value`` to a fresh model.
PlanKey = Callable[[nn.Module, str, Any], None]

SPEC_BUILDERS: dict[str, SpecBuilder] = {}
COLLAPSERS: dict[str, Collapser] = {}
FINISHERS: list[Finisher] = []
PLAN_KEYS: dict[str, PlanKey] = {}
#: ``weights(module) -> (weight, bias)`` of layers whose gated weights are not their own
#: ``weight`` / ``bias`` (a packed query / key / value projection), by class.
PROJECTIONS: dict[type[nn.Module], Callable[[nn.Module], tuple[Any, Any]]] = {}


def projection(module: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The weight and bias whose output rows a gate site of ``module`` gates."""
    for cls in type(module).__mro__:
        found = PROJECTIONS.get(cls)
        if found is not None:
            return found(module)
    return getattr(module, "weight", None), getattr(module, "bias", None)


def merge_entry(entry: dict[str, Any], fragment: dict[str, Any]) -> None:
    """Merge a collapser's fragment into a plan entry (dicts merged, lists extended)."""
    for key, value in fragment.items():
        old = entry.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            old.update(value)
        elif isinstance(old, list) and isinstance(value, list) and key not in ("in", "out"):
            old.extend(value)
        else:
            entry[key] = value
