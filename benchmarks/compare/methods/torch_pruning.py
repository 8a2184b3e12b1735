"""(c) Torch-Pruning (DepGraph), through its public API, at the same FLOPs as every method.

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

Equal FLOPs (issue 11): Torch-Pruning takes a channel ratio, not a FLOPs target, so the ratio is
searched (:func:`search_flops`): bisection on ``pruning_ratio``, each trial a one-shot
``pruner.step()`` on a fresh copy of the network, FLOPs counted with ``lp.count_flops`` (the
counter of every method), until the FLOPs removed lie within ``STOP_TOLERANCE`` of the target.
A uniform ratio moves in steps: every layer keeps ``floor(C * (1 - ratio))`` channels, so all
16-channel layers of a ResNet-20 lose a channel at the same ratio and the FLOPs jump by a few
points. When the bisection cannot land close enough, a **final correction** prunes the network
just short of the target a little further with the same importance ranked globally
(``global_pruning=True``, a second bisection on its small ratio). The row records the ratio, the
correction ratio (``None`` when none was needed), the FLOPs removed and the miss; the harness
requires every run within 1 point (``FLOPS_TOLERANCE``). Layers keep at least 5% of their
channels (``max_pruning_ratio=0.95``); the classifier / segmentation head's outputs are never
pruned.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback
from torch import nn

import lightning_prune as lp
from benchmarks.compare.methods.base import Context, Outcome, register_method
from benchmarks.compare.tasks import head_layer

#: The search stops once the FLOPs removed lie this close to the target (absolute fraction).
STOP_TOLERANCE = 0.0025
#: Equal FLOPs: every Torch-Pruning run must land within this of its target (1 point).
FLOPS_TOLERANCE = 0.01
#: Bisection iterations per stage (ratio resolution 0.95 / 2**10 = 0.001: finer than one channel
#: of the widest layers of these networks, 1 / 512).
ITERATIONS = 10
#: No layer loses more than this fraction of its channels.
MAX_PRUNING_RATIO = 0.95
#: Upper end of the correction step's (global) ratio: it only closes a gap of a few points.
MAX_CORRECTION = 0.5


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "Torch-Pruning is not installed: pip install 'lightning-prune[bench]' "
            "(or pip install torch-pruning)"
        ) from err
    return torch_pruning


def build_pruner(
    kind: str,
    net: nn.Module,
    example: torch.Tensor,
    ratio: float,
    reg: float = 5e-4,
    global_pruning: bool | None = None,
) -> Any:
    """A one-shot Torch-Pruning pruner over ``net``: ``pruner.step()`` prunes ``ratio``.

    ``kind``: ``"magnitude"`` (``MagnitudePruner``, L1, local unless ``global_pruning``) or
    ``"group_norm"`` (``GroupNormPruner``, group L2, global unless ``global_pruning`` is
    ``False``). The dependency graph is traced in eval mode (no BatchNorm statistics change);
    ``net``'s train/eval state is restored (Lightning keeps the state a module enters ``fit``
    with, so fine-tuning would otherwise run with frozen BatchNorm statistics).
    """
    was_training = net.training
    net.eval()
    try:
        return _build_pruner(kind, net, example, ratio, reg, global_pruning)
    finally:
        net.train(was_training)


def _build_pruner(
    kind: str,
    net: nn.Module,
    example: torch.Tensor,
    ratio: float,
    reg: float,
    global_pruning: bool | None,
) -> Any:
    tp = _tp()
    common: dict[str, Any] = {
        "pruning_ratio": float(ratio),
        "iterative_steps": 1,
        "max_pruning_ratio": MAX_PRUNING_RATIO,
        "ignored_layers": [head_layer(net)],
    }
    if kind == "magnitude":
        importance = tp.importance.MagnitudeImportance(p=1)
        return tp.pruner.MagnitudePruner(
            net, example, importance=importance, global_pruning=bool(global_pruning), **common
        )
    if kind == "group_norm":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        return tp.pruner.GroupNormPruner(
            net,
            example,
            importance=importance,
            reg=reg,
            global_pruning=global_pruning is not False,
            **common,
        )
    raise ValueError(f"unknown Torch-Pruning kind {kind!r}; 'magnitude' or 'group_norm'")


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


@dataclass
class Trial:
    """One pruned copy: the ratio it was pruned at, the network and its FLOPs."""

    ratio: float
    net: nn.Module
    flops: float


def prune_copy(
    kind: str,
    net: nn.Module,
    example: torch.Tensor,
    ratio: float,
    reg: float = 5e-4,
    global_pruning: bool | None = None,
) -> Trial:
    """A copy of ``net`` pruned once at ``ratio`` (``net`` itself is left untouched)."""
    pruned = copy.deepcopy(net)
    was_training = pruned.training
    pruned.eval()
    try:
        if ratio > 0:
            pruner = build_pruner(kind, pruned, example, ratio, reg, global_pruning)
            pruner.step()
            fix_attention(pruner, pruned)
        flops = float(lp.count_flops(pruned, example))
    finally:
        pruned.train(was_training)
    return Trial(float(ratio), pruned, flops)


@dataclass
class Bisection:
    """Outcome of one bisection: the closest trial, the closest one short of the target (fewer
    FLOPs removed than asked, ``None`` if every trial went past it) and the trial count."""

    best: Trial
    short: Trial | None
    evaluations: int


def bisect_ratio(
    evaluate: Callable[[float], Trial],
    target_flops: float,
    high: float,
    stop_flops: float,
    iterations: int = ITERATIONS,
) -> Bisection:
    """Bisect a ratio in ``(0, high]`` so that ``evaluate(ratio).flops`` approaches
    ``target_flops`` (FLOPs fall as the ratio grows); stop once within ``stop_flops``."""
    low, best, short, count = 0.0, None, None, 0
    for _ in range(iterations):  # keeps two networks at most (a U-Net copy is 50 MB)
        mid = (low + high) / 2
        trial = evaluate(mid)
        count += 1
        if best is None or abs(trial.flops - target_flops) < abs(best.flops - target_flops):
            best = trial
        if trial.flops > target_flops:  # not pruned enough yet
            low = mid
            if short is None or trial.ratio > short.ratio:
                short = trial
        else:
            high = mid
        if abs(trial.flops - target_flops) <= stop_flops:
            break
    if best is None:
        raise ValueError(f"iterations must be positive, got {iterations}")
    return Bisection(best, short, count)


@dataclass
class SearchResult:
    """The pruned network at the target FLOPs and how it was found.

    Attributes:
        net: the pruned network (a copy; the input network is untouched).
        flops: its FLOPs (``lp.count_flops``, batch 1).
        removed: fraction of the dense FLOPs removed.
        ratio: the pruner's ``pruning_ratio`` (for ``magnitude``: the uniform channel ratio).
        correction_ratio: ratio of the global correction step (``None``: not needed).
        evaluations: pruned copies tried.
    """

    net: nn.Module
    flops: float
    removed: float
    ratio: float
    correction_ratio: float | None = None
    evaluations: int = 0


def search_flops(
    kind: str,
    net: nn.Module,
    example: torch.Tensor,
    dense_flops: float,
    removed: float,
    reg: float = 5e-4,
    stop_tolerance: float = STOP_TOLERANCE,
    iterations: int = ITERATIONS,
) -> SearchResult:
    """Prune a copy of ``net`` with Torch-Pruning so that it removes ``removed`` of
    ``dense_flops`` (within ``stop_tolerance`` where the channel counts allow it).

    Stage 1 bisects the pruner's own ratio (uniform for ``magnitude``, global for
    ``group_norm``). If its closest trial misses by more than ``stop_tolerance``, stage 2 takes
    the closest trial short of the target and bisects the ratio of a global correction step
    with the same importance; the closer of the two stages wins.

    Example:
        >>> from lightning_prune.models import build_model
        >>> net = build_model("cifar_resnet20", num_classes=10)
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> found = search_flops("magnitude", net, x, lp.count_flops(net, x), 0.75)
        >>> abs(found.removed - 0.75) <= 0.01
        True
    """
    target_flops = (1.0 - removed) * float(dense_flops)
    stop_flops = stop_tolerance * float(dense_flops)
    global_first = kind == "group_norm"

    def stage1(ratio: float) -> Trial:
        return prune_copy(kind, net, example, ratio, reg, global_first)

    first = bisect_ratio(stage1, target_flops, MAX_PRUNING_RATIO, stop_flops, iterations)
    best, ratio, correction, evaluations = first.best, first.best.ratio, None, first.evaluations
    if abs(best.flops - target_flops) > stop_flops:
        base = first.short or Trial(0.0, net, float(lp.count_flops(net, example)))

        def stage2(extra: float) -> Trial:
            return prune_copy(kind, base.net, example, extra, reg, True)

        second = bisect_ratio(stage2, target_flops, MAX_CORRECTION, stop_flops, iterations)
        evaluations += second.evaluations
        if abs(second.best.flops - target_flops) < abs(best.flops - target_flops):
            best, ratio, correction = second.best, base.ratio, second.best.ratio
    return SearchResult(
        net=best.net,
        flops=best.flops,
        removed=1.0 - best.flops / float(dense_flops),
        ratio=ratio,
        correction_ratio=correction,
        evaluations=evaluations,
    )


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
    sparse_s = 0.0
    finetune_epochs = p.extra_epochs
    if kind == "group_norm":  # the regulariser does not depend on the ratio
        pruner = build_pruner(kind, net, example, 0.5, p.tp_reg)
        module = task.plain_module(net, p.lr)
        sparse_s = ctx.runner.fit(
            module, task.datamodule, p.prune_epochs, [SparseLearning(pruner, net)]
        )
        net = module.net.cpu()
        finetune_epochs = p.finetune_epochs
    start = time.perf_counter()
    found = search_flops(kind, net, example, ctx.dense_flops, target, p.tp_reg)
    search_s = time.perf_counter() - start
    module = task.plain_module(found.net, p.lr)
    finetune_s = ctx.runner.fit(module, task.datamodule, finetune_epochs)
    if kind == "magnitude":  # model_pruning masks the same uniform per-layer channel ratio
        ctx.shared.setdefault("channel_ratio", {})[target] = found.ratio
    info = {
        "pruner": "MagnitudePruner (L1, local)"
        if kind == "magnitude"
        else "GroupNormPruner (group L2, global)",
        "pruning_ratio": found.ratio,
        "correction_ratio": found.correction_ratio,
        "channel_ratio": found.ratio if kind == "magnitude" else None,
        "search_removed": found.removed,
        "search_miss": found.removed - target,
        "within_tolerance": abs(found.removed - target) <= FLOPS_TOLERANCE,
        "search_evaluations": found.evaluations,
        "sparse_learning_epochs": p.prune_epochs if kind == "group_norm" else 0,
        "finetune_epochs": finetune_epochs,
        "search_s": search_s,
    }
    return Outcome(net=module.net.cpu(), train_s=sparse_s + finetune_s, prune_s=search_s, info=info)


@register_method(
    "tp_magnitude",
    family="torch_pruning",
    label="Torch-Pruning MagnitudePruner (L1, uniform ratio searched to the FLOPs), prune, "
    "fine-tune",
)
def tp_magnitude(ctx: Context, target: float | None) -> Outcome:
    return run(ctx, target, "magnitude")


@register_method(
    "tp_group_norm",
    family="torch_pruning",
    label="Torch-Pruning GroupNormPruner (sparse learning, global ratio searched to the FLOPs), "
    "prune, fine-tune",
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
