"""(c) Torch-Pruning (DepGraph), through its public API, at the same FLOPs targets.

Two of its pruners, following its own CIFAR benchmark recipe (``benchmarks/main.py``):

* ``tp_magnitude``: ``MagnitudePruner`` with ``MagnitudeImportance(p=1)`` (L1 filter norms),
  one uniform (local) channel ratio for every layer; prune first, then fine-tune for the whole
  epoch budget.
* ``tp_group_norm``: ``GroupNormPruner`` (group-L2 importance, its sparse-learning
  regulariser ``reg``) with global ranking: ``prune_epochs`` of sparse learning
  (``pruner.regularize`` after every backward), then pruning, then fine-tuning for the rest.

Both reach the FLOPs target the way Torch-Pruning's benchmark does ("progressive pruning"):
``pruning_ratio=1.0`` spread over ``iterative_steps`` small steps, stepping until the FLOPs
(counted with ``lp.count_flops``, the counter used for every method) fall to the target. The
last step can overshoot; the achieved FLOPs are reported as they come out. Layers keep at
least 5% of their channels (``max_pruning_ratio=0.95``); the classifier / segmentation head's
outputs are never pruned.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import nn

import lightning_prune as lp
from benchmarks.compare.methods.base import Context, Outcome, register_method
from benchmarks.compare.tasks import head_layer


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "Torch-Pruning is not installed: pip install 'lightning-prune[bench]' "
            "(or pip install torch-pruning)"
        ) from err
    return torch_pruning


def build_pruner(kind: str, net: nn.Module, example: torch.Tensor, steps: int, reg: float) -> Any:
    """A Torch-Pruning pruner over ``net`` that prunes ``1/steps`` more per ``step()``.

    Building the dependency graph leaves ``net`` in eval mode; its train/eval state is restored
    (Lightning keeps the state a module enters ``fit`` with, so the fine-tuning would otherwise
    run with frozen BatchNorm statistics).
    """
    was_training = net.training
    try:
        return _build_pruner(kind, net, example, steps, reg)
    finally:
        net.train(was_training)


def _build_pruner(kind: str, net: nn.Module, example: torch.Tensor, steps: int, reg: float) -> Any:
    tp = _tp()
    common: dict[str, Any] = {
        "pruning_ratio": 1.0,
        "iterative_steps": steps,
        "max_pruning_ratio": 0.95,
        "ignored_layers": [head_layer(net)],
    }
    if kind == "magnitude":
        importance = tp.importance.MagnitudeImportance(p=1)
        return tp.pruner.MagnitudePruner(
            net, example, importance=importance, global_pruning=False, **common
        )
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    return tp.pruner.GroupNormPruner(
        net, example, importance=importance, reg=reg, global_pruning=True, **common
    )


def progressive_pruning(
    pruner: Any, net: nn.Module, example: torch.Tensor, target_flops: float
) -> tuple[int, float]:
    """Step the pruner until ``lp.count_flops(net) <= target_flops``; return (steps, FLOPs).

    Runs in eval mode (as Torch-Pruning's benchmark does) and restores the train/eval state.
    """
    was_training = net.training
    net.eval()
    try:
        flops = float(lp.count_flops(net, example))
        while flops > target_flops and pruner.current_step < pruner.iterative_steps:
            pruner.step()
            flops = float(lp.count_flops(net, example))
    finally:
        net.train(was_training)
    return int(pruner.current_step), flops


class SparseLearning(Callback):
    """Torch-Pruning's sparse-learning phase: ``pruner.regularize(net)`` after every backward."""

    def __init__(self, pruner: Any, net: nn.Module) -> None:
        self.pruner = pruner
        self.net = net

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.pruner.update_regularizer()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.pruner.regularize(self.net)


def run(ctx: Context, target: float | None, kind: str) -> Outcome:
    assert target is not None
    task, p = ctx.task, ctx.profile
    net = ctx.dense_net()
    example = task.example(1)
    pruner = build_pruner(kind, net, example, p.tp_steps, p.tp_reg)
    sparse_s = 0.0
    finetune_epochs = p.extra_epochs
    if kind == "group_norm":
        module = task.plain_module(net, p.lr)
        sparse_s = ctx.runner.fit(
            module, task.datamodule, p.prune_epochs, [SparseLearning(pruner, net)]
        )
        net = module.net.cpu()
        finetune_epochs = p.finetune_epochs
    start = time.perf_counter()
    steps, _ = progressive_pruning(pruner, net, example, (1.0 - target) * ctx.dense_flops)
    search_s = time.perf_counter() - start
    module = task.plain_module(net, p.lr)
    finetune_s = ctx.runner.fit(module, task.datamodule, finetune_epochs)
    channel_ratio = steps / p.tp_steps
    if kind == "magnitude":  # model_pruning masks the same per-layer channel ratio
        ctx.shared.setdefault("channel_ratio", {})[target] = channel_ratio
    info = {
        "pruner": "MagnitudePruner (L1, local)"
        if kind == "magnitude"
        else "GroupNormPruner (group L2, global)",
        "tp_steps": steps,
        "channel_ratio": channel_ratio if kind == "magnitude" else None,
        "sparse_learning_epochs": p.prune_epochs if kind == "group_norm" else 0,
        "finetune_epochs": finetune_epochs,
        "search_s": search_s,
    }
    return Outcome(net=module.net.cpu(), train_s=sparse_s + finetune_s, prune_s=search_s, info=info)


@register_method(
    "tp_magnitude",
    family="torch_pruning",
    label="Torch-Pruning MagnitudePruner (L1, uniform ratio), prune then fine-tune",
)
def tp_magnitude(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "magnitude")


@register_method(
    "tp_group_norm",
    family="torch_pruning",
    label="Torch-Pruning GroupNormPruner (sparse learning, global), prune, fine-tune",
)
def tp_group_norm(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "group_norm")
