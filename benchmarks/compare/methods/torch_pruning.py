"""(c) Torch-Pruning (DepGraph), through its public API, at the same FLOPs targets.

Two of its pruners, following its own CIFAR benchmark recipe (``benchmarks/main.py``):

* ``tp_magnitude``: ``MagnitudePruner`` with ``MagnitudeImportance(p=1)`` (L1 filter norms),
  one uniform (local) channel ratio for every layer; prune first, then fine-tune for the whole
  epoch budget.
* ``tp_group_norm``: ``GroupNormPruner`` (group-L2 importance, its sparse-learning
  regulariser ``reg``) with global ranking: ``prune_epochs`` of sparse learning
  (``pruner.regularize`` after every backward), then pruning, then fine-tuning for the rest.
* ``tp_vit``: its Vision Transformer recipe: ``MetaPruner`` with group-L2 importance over
  heads (``num_heads`` of every fused ``qkv`` projection, ``prune_num_heads=True``, head
  width kept) and the other widths (MLP hidden, embedding); after every step the attention
  modules' ``num_heads`` / ``head_dim`` / ``attn_dim`` are set by hand, as its users do.

Both reach the FLOPs target the way Torch-Pruning's benchmark does ("progressive pruning"):
``pruning_ratio=1.0`` spread over ``iterative_steps`` small steps, stepping until the FLOPs
(counted with ``lp.count_flops``, the counter used for every method) fall to the target. The
last step can overshoot; the achieved FLOPs are reported as they come out. Layers keep at
least 5% of their channels (``max_pruning_ratio=0.95``); the classifier / segmentation head's
outputs are never pruned.
"""

from __future__ import annotations

import copy
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


def attention_heads(net: nn.Module) -> dict[nn.Module, int]:
    """``{qkv projection: head count}`` of every fused-qkv attention module (timm ``Attention``)."""
    return {
        m.qkv: int(m.num_heads)
        for m in net.modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(m.num_heads, int)
    }


def vit_pruner(net: nn.Module, example: torch.Tensor, ratio: float) -> Any:
    """Torch-Pruning's ViT recipe, one shot: ``ratio`` of every width and of the heads."""
    tp = _tp()
    return tp.pruner.MetaPruner(
        net,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=False,
        pruning_ratio=ratio,
        num_heads=attention_heads(net),
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        ignored_layers=[head_layer(net)],
    )


def vit_search(
    net: nn.Module, example: torch.Tensor, target_flops: float, rounds: int = 12
) -> tuple[nn.Module, float]:
    """The one-shot ViT pruning whose FLOPs come closest to ``target_flops`` from below.

    Its head pruning removes at least one head per ``step()`` of an iterative schedule, so
    the ratio is bisected instead, pruning a fresh copy each time. Returns (net, ratio).
    """
    was_training = net.training
    low, high, best = 0.0, 0.95, (copy.deepcopy(net), 0.0)
    for _ in range(rounds):
        ratio = (low + high) / 2
        trial = copy.deepcopy(net).eval()
        pruner = vit_pruner(trial, example, ratio)
        pruner.step()
        fix_attention(pruner, trial)
        if float(lp.count_flops(trial, example)) <= target_flops:
            best, high = (trial, ratio), ratio
        else:
            low = ratio
    best[0].train(was_training)
    return best


def fix_attention(pruner: Any, net: nn.Module) -> None:
    """Set what attention modules read at run time after Torch-Pruning removed heads."""
    for m in net.modules():
        qkv = getattr(m, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv in getattr(pruner, "num_heads", {}):
            m.num_heads = int(pruner.num_heads[qkv])
            m.head_dim = qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim


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
            fix_attention(pruner, net)
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
    if kind == "vit":
        return _run_vit(ctx, target, net, example)
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


def _run_vit(ctx: Context, target: float, net: nn.Module, example: torch.Tensor) -> Outcome:
    start = time.perf_counter()
    net, ratio = vit_search(net, example, (1.0 - target) * ctx.dense_flops)
    search_s = time.perf_counter() - start
    module = ctx.task.plain_module(net, ctx.profile.lr)
    finetune_s = ctx.runner.fit(module, ctx.task.datamodule, ctx.profile.extra_epochs)
    info = {
        "pruner": "MetaPruner (group L2, heads + widths, one shot)",
        "pruning_ratio": ratio,
        "finetune_epochs": ctx.profile.extra_epochs,
        "search_s": search_s,
    }
    return Outcome(net=module.net.cpu(), train_s=finetune_s, prune_s=search_s, info=info)


@register_method(
    "tp_vit",
    family="torch_pruning",
    label="Torch-Pruning ViT recipe (MetaPruner, heads + widths, num_heads fixed by hand)",
)
def tp_vit(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "vit")
