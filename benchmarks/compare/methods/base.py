"""What a method is: a function from the shared dense checkpoint and a FLOPs target to a network.

Methods register themselves by name with :func:`register_method`; the orchestrator then
evaluates every returned network the same way (accuracy / mIoU, ``lp.count_flops``,
``lp.count_params``, paired CPU latency).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.compare.tasks import TASKS, TaskSetup
from benchmarks.compare.training import Runner


@dataclass
class Context:
    """Everything a method needs.

    Attributes:
        task: the task (data, networks, evaluation).
        runner: the shared Trainer settings.
        dense_state: ``state_dict`` of the shared dense checkpoint.
        dense_flops: FLOPs of the dense network (``lp.count_flops``, batch 1).
        shared: facts one method leaves for another (e.g. Torch-Pruning's per-layer channel
            ratio at each target, used by ``model_pruning``).
    """

    task: TaskSetup
    runner: Runner
    dense_state: dict[str, torch.Tensor]
    dense_flops: int
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def profile(self) -> Any:
        return self.task.profile

    def dense_net(self) -> nn.Module:
        """A fresh copy of the dense checkpoint."""
        net = self.task.build_net()
        net.load_state_dict(copy.deepcopy(self.dense_state))
        return net


@dataclass
class Outcome:
    """What a method returns.

    Attributes:
        net: the final network (a plain ``nn.Module``).
        train_s: wall time of its training (all phases of the extra epochs).
        prune_s: wall time spent pruning outside training (search, collapse).
        info: method-specific facts for the report (e.g. the controller's final ratio).
    """

    net: nn.Module
    train_s: float
    prune_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[[Context, "float | None"], Outcome]


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: the ``--methods`` name.
        family: ``dense``, ``lightning_prune``, ``torch_pruning``, ``model_pruning`` or ``dpp``.
        label: human-readable description for the report.
        fn: ``fn(ctx, target) -> Outcome``; ``target`` is the fraction of FLOPs to remove
            (``None`` for the dense baseline).
        pruning: whether it runs once per target.
        tasks: tasks it applies to.
    """

    name: str
    family: str
    label: str
    fn: MethodFn
    pruning: bool = True
    tasks: tuple[str, ...] = TASKS


METHODS: dict[str, Method] = {}

#: Run order: ``model_pruning`` reuses the channel ratios ``tp_magnitude`` found; methods
#: registered elsewhere run after these.
ORDER = (
    "dense",
    "lp_sigmoid",
    "lp_hard_concrete",
    "tp_magnitude",
    "tp_group_norm",
    "model_pruning",
)

ALIASES: dict[str, tuple[str, ...]] = {
    "lightning_prune": ("lp_sigmoid", "lp_hard_concrete"),
    "lp": ("lp_sigmoid", "lp_hard_concrete"),
    "torch_pruning": ("tp_magnitude", "tp_group_norm"),
    "tp": ("tp_magnitude", "tp_group_norm"),
    "dpp": ("dpp_feature", "dpp_weight_2to4"),
}


def register_method(
    name: str, family: str, label: str, pruning: bool = True, tasks: tuple[str, ...] = TASKS
) -> Callable[[MethodFn], MethodFn]:
    """Decorator registering ``fn(ctx, target) -> Outcome`` as method ``name``."""

    def decorator(fn: MethodFn) -> MethodFn:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, family, label, fn, pruning, tasks)
        return fn

    return decorator


def resolve_methods(requested: list[str] | None, task: str, defaults: tuple[str, ...]) -> list[str]:
    """Expand aliases (``all``, ``lightning_prune``, ``torch_pruning``); sort by :data:`ORDER`.

    Methods that do not apply to ``task`` are dropped.

    Raises:
        SystemExit: for an unknown name.
    """
    names: list[str] = []
    for item in requested or list(defaults):
        if item == "all":
            names.extend(METHODS)
        elif item in ALIASES:
            names.extend(ALIASES[item])
        elif item in METHODS:
            names.append(item)
        else:
            choices = ", ".join([*METHODS, *ALIASES, "all"])
            raise SystemExit(f"unknown method {item!r}; choose from {choices}")
    wanted = [name for name in dict.fromkeys(names) if task in METHODS[name].tasks]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(wanted, key=lambda name: rank.get(name, len(ORDER)))
