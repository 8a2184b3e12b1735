"""Gate parameters in their own optimizer group (own learning rate, no weight decay).

Weight decay on gate logits pulls them towards 0, where a sigmoid gate sits undecided at 0.5:
exactly the fence-sitting the method tries to avoid. Two ways to get a separate group:

* build it yourself with :func:`gate_param_groups` (the ready modules do);
* let :func:`isolate_gate_parameters` move the gates out of an optimizer that
  ``configure_optimizers`` already built (what :class:`~lightning_prune.PrunableMixin` and
  :class:`~lightning_prune.callbacks.RelaxedPruning` do by default). Schedulers attached to that
  optimizer are extended so that the new group follows the same schedule, scaled to its own
  base learning rate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from torch import nn
from torch.optim import Optimizer

import lightning_prune as lp

#: Marker key of the gate group in ``optimizer.param_groups``.
GATE_GROUP_KEY = "lp_gates"
#: Marker key of the group of kernel/weight DPP mask logits.
DPP_GROUP_KEY = "lp_dpp_masks"

# Scheduler attributes holding one entry per param group: True = a learning rate (scaled).
_PER_GROUP_ATTRS = {
    "base_lrs": True,
    "_last_lr": True,
    "max_lrs": True,
    "min_lrs": True,
    "lr_lambdas": False,
    "base_momentums": False,
    "max_momentums": False,
}


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of the model's gates (empty when it has none).

    Example:
        >>> import torch
        >>> gate_parameters(torch.nn.Linear(2, 2))
        []
    """
    seen: set[int] = set()
    params = []
    for gate in lp.get_gates(model):
        for p in gate.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def gate_param_groups(
    model: nn.Module,
    gate_lr: float | None = None,
    gate_weight_decay: float = 0.0,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Param groups for an optimizer: the network's parameters, then the gates' own group.

    Args:
        model: the (augmented) model.
        gate_lr: learning rate of the gate group (``None``: the optimizer's default).
        gate_weight_decay: weight decay of the gate group (0 by default).
        **group_options: options of the network group (e.g. ``weight_decay=5e-4``).

    Returns:
        A list to pass as the optimizer's ``params``; the gate group is omitted when the model
        has no gates.

    Example:
        >>> import torch
        >>> groups = gate_param_groups(torch.nn.Linear(2, 2), weight_decay=1e-4)
        >>> len(groups), groups[0]["weight_decay"]
        (1, 0.0001)
    """
    gates = gate_parameters(model)
    gate_ids = {id(p) for p in gates}
    rest = [p for p in model.parameters() if id(p) not in gate_ids]
    groups: list[dict[str, Any]] = [{"params": rest, **group_options}]
    if gates:
        group: dict[str, Any] = {
            "params": gates,
            "weight_decay": gate_weight_decay,
            GATE_GROUP_KEY: True,
        }
        if gate_lr is not None:
            group["lr"] = gate_lr
        groups.append(group)
    return groups


def _walk(obj: Any) -> Iterator[Any]:
    """Every optimizer / scheduler in a ``configure_optimizers`` return value."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _walk(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _walk(value)
    elif obj is not None:
        yield obj


def _schedulers_of(scheduler: Any) -> Iterator[Any]:
    yield scheduler
    for inner in getattr(scheduler, "_schedulers", None) or []:
        yield from _schedulers_of(inner)


def _extend_scheduler(scheduler: Any, source: int, ratio: float, n_before: int) -> None:
    for name, is_lr in _PER_GROUP_ATTRS.items():
        values = getattr(scheduler, name, None)
        if isinstance(values, list) and len(values) == n_before:
            value = values[source]
            if is_lr and isinstance(value, (int, float)):
                value = value * ratio
            elif not is_lr:
                value = copy.copy(value)
            values.append(value)


def isolate_gate_parameters(
    configured: Any,
    model: nn.Module,
    gate_lr: float | None = None,
    gate_weight_decay: float = 0.0,
) -> int:
    """Move the model's gate parameters into their own group of each optimizer in ``configured``.

    ``configured`` is whatever ``configure_optimizers`` returned (an optimizer, lists, dicts).
    Idempotent: gates already alone in a group are left there. Gates missing from every
    optimizer are added to the first one. Schedulers attached to a modified optimizer get an
    entry for the new group (``base_lrs``, ``lr_lambdas``, ...) and per-group keys of the source
    group (``initial_lr``, ``max_lr``, momentum, ...) are copied, learning rates scaled by
    ``gate_lr / source lr``.

    Args:
        configured: the return value of ``configure_optimizers``.
        model: the augmented model.
        gate_lr: base learning rate of the gate group (``None``: that of the group the gates
            came from).
        gate_weight_decay: weight decay of the gate group.

    Returns:
        The number of gate parameters moved or added.
    """
    return isolate_parameters(
        configured, gate_parameters(model), GATE_GROUP_KEY, gate_lr, gate_weight_decay
    )


def isolate_parameters(
    configured: Any,
    params: list[nn.Parameter],
    group_key: str,
    lr: float | None = None,
    weight_decay: float = 0.0,
) -> int:
    """Move ``params`` into their own group (marked ``group_key``) of each optimizer.

    The mechanism of :func:`isolate_gate_parameters`, for any set of parameters (e.g. the
    logits of kernel/weight DPP masks, :data:`DPP_GROUP_KEY`).

    Args:
        configured: the return value of ``configure_optimizers``.
        params: the parameters to isolate.
        group_key: marker key of the new group in ``optimizer.param_groups``.
        lr: base learning rate of the new group (``None``: that of the source group).
        weight_decay: weight decay of the new group.

    Returns:
        The number of parameters moved or added.
    """
    if not params:
        return 0
    objects = list(_walk(configured))
    optimizers = [o for o in objects if isinstance(o, Optimizer)]
    if not optimizers:
        return 0
    schedulers = [s for o in objects if not isinstance(o, Optimizer) for s in _schedulers_of(o)]
    ids = {id(p): p for p in params}
    placed: set[int] = set()
    moved_total = 0
    for optimizer in optimizers:
        moved: list[nn.Parameter] = []
        source = None
        for index, group in enumerate(optimizer.param_groups):
            group_params = group["params"]
            if group.get(group_key) or all(id(p) in ids for p in group_params):
                placed.update(id(p) for p in group_params if id(p) in ids)
                continue
            keep = [p for p in group_params if id(p) not in ids]
            if len(keep) != len(group_params):
                moved.extend(p for p in group_params if id(p) in ids)
                group["params"] = keep
                source = index if source is None else source
        if moved:
            _add_group(optimizer, moved, source or 0, schedulers, lr, weight_decay, group_key)
            placed.update(id(p) for p in moved)
            moved_total += len(moved)
    missing = [p for p in params if id(p) not in placed]
    if missing:
        _add_group(optimizers[0], missing, 0, schedulers, lr, weight_decay, group_key)
        moved_total += len(missing)
    return moved_total


def _add_group(
    optimizer: Optimizer,
    params: list[nn.Parameter],
    source: int,
    schedulers: list[Any],
    lr: float | None,
    weight_decay: float,
    group_key: str = GATE_GROUP_KEY,
) -> None:
    n_before = len(optimizer.param_groups)
    src = optimizer.param_groups[source]
    src_base = float(src.get("initial_lr", src["lr"]))
    base = float(lr) if lr is not None else src_base
    ratio = base / src_base if src_base else 1.0
    group: dict[str, Any] = {"params": params, "lr": src["lr"] * ratio, group_key: True}
    if "weight_decay" in optimizer.defaults:
        group["weight_decay"] = weight_decay
    for key, value in src.items():
        if key in group or key == "params" or key == "weight_decay":
            continue
        if key in ("initial_lr", "max_lr", "min_lr", "base_lr") and isinstance(value, (int, float)):
            group[key] = value * ratio
        else:
            group[key] = copy.copy(value)
    optimizer.add_param_group(group)
    for scheduler in schedulers:
        if getattr(scheduler, "optimizer", None) is optimizer:
            _extend_scheduler(scheduler, source, ratio, n_before)


def remove_parameters(configured: Any, params: list[nn.Parameter]) -> int:
    """Take ``params`` out of every optimizer in ``configured`` (another optimizer trains them).

    Groups left empty are removed too, with the matching per-group entries of their schedulers.

    Args:
        configured: the return value of ``configure_optimizers``.
        params: the parameters to remove (e.g. :func:`gate_parameters`).

    Returns:
        How many parameter entries were removed.

    Example:
        >>> import torch
        >>> net, gate = torch.nn.Linear(2, 2), torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.SGD([*net.parameters(), gate], lr=0.1)
        >>> remove_parameters(opt, [gate]), len(opt.param_groups[0]["params"])
        (1, 2)
    """
    ids = {id(p) for p in params}
    if not ids:
        return 0
    objects = list(_walk(configured))
    schedulers = [s for o in objects if not isinstance(o, Optimizer) for s in _schedulers_of(o)]
    removed = 0
    for optimizer in (o for o in objects if isinstance(o, Optimizer)):
        empty = []
        for index, group in enumerate(optimizer.param_groups):
            keep = [p for p in group["params"] if id(p) not in ids]
            removed += len(group["params"]) - len(keep)
            group["params"] = keep
            if not keep:
                empty.append(index)
        for index in reversed(empty):
            if len(optimizer.param_groups) == 1:
                break
            del optimizer.param_groups[index]
            for scheduler in schedulers:
                if getattr(scheduler, "optimizer", None) is optimizer:
                    for name in _PER_GROUP_ATTRS:
                        values = getattr(scheduler, name, None)
                        if isinstance(values, list) and len(values) > index:
                            del values[index]
    return removed


def is_isolated(optimizer: Optimizer, model: nn.Module) -> bool:
    """Whether every gate parameter of ``model`` is alone in a gate group of ``optimizer``."""
    gate_ids = {id(p) for p in gate_parameters(model)}
    found: set[int] = set()
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & gate_ids:
            if not ids <= gate_ids:
                return False
            found |= ids
    return found == gate_ids


__all__ = [
    "DPP_GROUP_KEY",
    "GATE_GROUP_KEY",
    "gate_param_groups",
    "gate_parameters",
    "is_isolated",
    "isolate_gate_parameters",
    "isolate_parameters",
    "remove_parameters",
]
