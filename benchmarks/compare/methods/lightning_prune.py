"""(b) lightning_prune: relaxed channel gates, a FLOPs-target controller, collapse, fine-tune.

The path a user of the Lightning layer takes: the ready ``ClassificationModule`` /
``SegmentationModule`` (``PrunableMixin``) around the dense network, a ``SparsityPenalty``
with a PI controller on the hard FLOPs ratio (``target = 1 - removed``), the
``TemperatureAnnealing`` callback for sigmoid gates and ``NetworkCollapse``, which turns the
gated network into the smaller dense one when the structure-learning fit ends. A second
``fit`` fine-tunes the collapsed network (no gates, no penalty) for the rest of the epoch
budget with the same SGD recipe as every other method.

Settings for a short structure phase (a few hundred steps; see benchmarks/README.md):

* Adam (paper 1's optimizer): network ``structure_lr`` (1e-3), gates ``gate_lr`` (0.1) in
  their own param group. Adam's step does not depend on the size of the gate gradient, which
  the sigmoid's saturation (k * s = 5 at init) and each channel's small FLOPs share make tiny;
  with SGD at any sane learning rate the gates do not move in a few hundred steps and the
  final budget snap ends up choosing channels at random.
* PI gains ``controller_kp`` / ``controller_ki`` (2, 0.05 per step): the library's defaults
  are tuned for runs of thousands of steps.
* sigmoid temperature fixed at 5 for the first ``anneal_from`` of the phase, then a cubic
  ramp to 30, so the gates first move, then harden (collapse then changes little).
* per gate family, the profile's ``gate_settings`` may change these: the cpu profile gives
  hard-concrete gates ``gate_lr`` 0.3, gains 5 / 0.2 and a magnitude-seeded start
  (``gate_init``), so that they close during the 79-step phase instead of leaving every
  decision to the final budget snap.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch
from lightning.pytorch import Callback

import lightning_prune as lp
from benchmarks.compare.methods.base import Context, Outcome, register_method
from lightning_prune.callbacks import NetworkCollapse, TemperatureAnnealing
from lightning_prune.controller import PIController
from lightning_prune.module import ClassificationModule, SegmentationModule
from lightning_prune.penalties import SparsityPenalty


class _Probe(Callback):
    """Records the hard FLOPs ratio when training ends, before the controller's final snap."""

    def __init__(self) -> None:
        self.ratio_before_snap: float | None = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:  # callbacks run first
        if lp.is_augmented(pl_module):
            self.ratio_before_snap = float(lp.hard_cost(pl_module) / lp.dense_cost(pl_module))


def gated_module(
    ctx: Context,
    gate: str,
    penalty: SparsityPenalty,
    gate_kwargs: dict[str, Any] | None = None,
    gate_init: str | None = None,
) -> ClassificationModule | SegmentationModule:
    """The task's ready module around a copy of the dense network, set up for structure
    learning: Adam (``structure_lr``) with a cosine schedule per step, ``gate`` gates with
    their own learning rate (``gate_lr``) seeded by ``gate_init``, and ``penalty``; settings
    from the profile's ``gate_settings[gate]`` where given."""
    task, p = ctx.task, ctx.profile.for_gate(gate)
    adam = functools.partial(torch.optim.Adam, lr=p.structure_lr, weight_decay=p.weight_decay)
    kwargs: dict[str, Any] = {
        "num_classes": task.num_classes,
        "input_shape": task.input_shape,
        "optimizer": adam,
        "lr_scheduler": "cosine",
        "scheduler_interval": "step",
        "gate": gate,
        "penalty": penalty,
        "gate_lr": p.gate_lr,
        "gate_init": gate_init,
        "gate_init_spread": p.gate_init_spread,
    }
    if gate_kwargs is not None:
        kwargs["gate_kwargs"] = gate_kwargs
    if task.name == "classification":
        return ClassificationModule(ctx.dense_net(), **kwargs)
    return SegmentationModule(ctx.dense_net(), ignore_index=task.ignore_index, **kwargs)


def collapse_and_finetune(
    ctx: Context, module: ClassificationModule | SegmentationModule
) -> tuple[float, float]:
    """Collapse ``module`` if the structure fit did not (``prune_epochs == 0``), then fine-tune
    it with the common SGD recipe for the remaining epochs; returns (collapse s, fine-tune s)."""
    collapse_s = 0.0
    if lp.is_augmented(module):
        start = time.perf_counter()
        lp.collapse(module, inplace=True)
        collapse_s = time.perf_counter() - start
    module.optimizer_fn = ctx.task.optimizer(ctx.profile.lr)
    finetune_s = ctx.runner.fit(module, ctx.task.datamodule, ctx.profile.finetune_epochs)
    return collapse_s, finetune_s


def run(ctx: Context, target: float | None, gate: str) -> Outcome:
    assert target is not None
    task, p = ctx.task, ctx.profile.for_gate(gate)
    controller = PIController(
        target=1.0 - target, kind="flops", kp=p.controller_kp, ki=p.controller_ki
    )
    module = gated_module(
        ctx,
        gate,
        SparsityPenalty(controller=controller),
        gate_kwargs=p.gate_kwargs or None,
        gate_init=p.gate_init,
    )
    probe = _Probe()
    collapse = NetworkCollapse(save=False, latency_repeats=0, verify=True)
    callbacks: list[Any] = [probe, collapse]
    if gate == "sigmoid":
        anneal = TemperatureAnnealing(
            "cubic",
            start=5.0,
            end=30.0,
            interval="step",
            start_epoch=p.anneal_from * p.prune_epochs,
        )
        callbacks.insert(0, anneal)
    prune_s = ctx.runner.fit(module, task.datamodule, p.prune_epochs, callbacks)
    collapse_s, finetune_s = collapse_and_finetune(ctx, module)
    prune_s += collapse_s
    info = {
        "gate": gate,
        "gate_init": p.gate_init,
        "gate_lr": p.gate_lr,
        "gate_kwargs": p.gate_kwargs,
        "controller_gains": [p.controller_kp, p.controller_ki],
        "controller_target_ratio": controller.target,
        "ratio_before_snap": probe.ratio_before_snap,
        "snapped_units": controller.snapped,
        "final_multiplier": controller.multiplier,
        "structure_epochs": p.prune_epochs,
        "finetune_epochs": p.finetune_epochs,
        "structure_s": prune_s,
        "finetune_s": finetune_s,
    }
    return Outcome(net=module.net.cpu(), train_s=prune_s + finetune_s, info=info)


@register_method(
    "lp_sigmoid",
    family="lightning_prune",
    label="lightning_prune: sigmoid gates, cubic annealing 5->30, PI FLOPs controller",
)
def lp_sigmoid(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "sigmoid")


@register_method(
    "lp_hard_concrete",
    family="lightning_prune",
    label="lightning_prune: hard-concrete (L0) gates, PI FLOPs controller",
)
def lp_hard_concrete(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "hard_concrete")
