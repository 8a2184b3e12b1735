"""(b) lightning_prune with its library defaults: only the FLOPs target is given.

The path a user of the Lightning layer takes: the ready ``ClassificationModule`` /
``SegmentationModule`` around the dense network, built with ``gate=...`` and
``target = 1 - removed`` and nothing else of the pruning (no gate learning rate, no controller
gains, no gate initialisation, no temperature); the optimizer and learning-rate schedule are the
task's training recipe, the one every other method trains with (SGD, cosine per step, ``lr``).
The callbacks are the library's, without arguments that change the pruning:
``TemperatureAnnealing()`` (follows the schedule) and ``NetworkCollapse`` (no file written, no
latency timing: the harness times every network itself).

ONE ``fit`` of all the ``extra_epochs``: the library derives its
:class:`~lightning_prune.PruningSchedule` from the run's length (structure learning in the first
half of the optimizer steps, then the gates are frozen, ``NetworkCollapse`` collapses the
network mid-fit and the optimizer is rebuilt, and training continues on the compact network).
How the structure phase ended (``lightning_prune.module.state.structure_outcome``: snap share,
relaxed FLOPs ratio before the snap, ...) goes into the row's ``info``.
"""

from __future__ import annotations

from typing import Any

import lightning_prune as lp
from benchmarks.compare.methods.base import Context, Outcome, register_method
from lightning_prune.callbacks import NetworkCollapse, TemperatureAnnealing
from lightning_prune.module import ClassificationModule, SegmentationModule
from lightning_prune.module.state import structure_outcome

#: The only keyword arguments of the ready module that concern pruning (tests check this).
PRUNING_ARGUMENTS = ("gate", "target")


def module_kwargs(ctx: Context, gate: str, removed: float) -> dict[str, Any]:
    """Keyword arguments of the ready module: the task (classes, input shape), the task's
    training recipe (optimizer, cosine per step) and, of the pruning, only ``gate`` and
    ``target``."""
    task, p = ctx.task, ctx.profile
    return {
        "num_classes": task.num_classes,
        "input_shape": task.input_shape,
        "optimizer": task.optimizer(p.lr),
        "lr_scheduler": "cosine",
        "scheduler_interval": "step",
        "gate": gate,
        "target": 1.0 - removed,
    }


def default_module(
    ctx: Context, gate: str, removed: float
) -> ClassificationModule | SegmentationModule:
    """The task's ready module around a copy of the dense checkpoint, library defaults."""
    kwargs = module_kwargs(ctx, gate, removed)
    if ctx.task.name == "classification":
        return ClassificationModule(ctx.dense_net(), **kwargs)
    return SegmentationModule(ctx.dense_net(), ignore_index=ctx.task.ignore_index, **kwargs)


def default_callbacks() -> list[Any]:
    """The library's callbacks, with no argument that changes the pruning."""
    return [TemperatureAnnealing(), NetworkCollapse(save=False, latency_repeats=0)]


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an outcome value (tensors and numpy scalars to numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    return value


def run(ctx: Context, target: float | None, gate: str) -> Outcome:
    assert target is not None
    task, p = ctx.task, ctx.profile
    module = default_module(ctx, gate, target)
    train_s = ctx.runner.fit(module, task.datamodule, p.extra_epochs, default_callbacks())
    if lp.is_augmented(module):  # a run too short for a final phase: collapse as fit's end does
        lp.collapse(module, inplace=True)
    outcome = structure_outcome(module) or {}
    info: dict[str, Any] = {
        "gate": gate,
        "target_ratio": 1.0 - target,
        "module_arguments": {"gate": gate, "target": 1.0 - target},
        "epochs": p.extra_epochs,
        "optimizer": f"SGD lr {p.lr} (Nesterov 0.9, wd {p.weight_decay}), cosine per step",
        "structure_outcome": _plain(outcome),
        "snap_share": outcome.get("snap_share"),
        "relaxed_flops_ratio_before_snap": outcome.get("relaxed_flops_ratio_before_snap"),
        "structure_flops_ratio": outcome.get("flops_ratio"),
    }
    return Outcome(net=module.net.cpu(), train_s=train_s, info=info)


@register_method(
    "lp_sigmoid",
    family="lightning_prune",
    label="lightning_prune defaults, sigmoid gates, only the target (one fit: structure, "
    "collapse, training of the compact network)",
)
def lp_sigmoid(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "sigmoid")


@register_method(
    "lp_hard_concrete",
    family="lightning_prune",
    label="lightning_prune defaults, hard-concrete (L0) gates, only the target (one fit)",
)
def lp_hard_concrete(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "hard_concrete")
