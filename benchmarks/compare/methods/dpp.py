"""(e) Dynamic Probabilistic Pruning (DPP): Gumbel top-k channel gates, and 2:4 weight masks.

Not in any profile's default method list; run them with ``--methods dpp`` (or by name).

* ``dpp_feature``: DPP at feature-map granularity, the path a user of the Lightning layer takes:
  the ready ``ClassificationModule`` / ``SegmentationModule`` with ``gate="gumbel_topk"``. A
  Gumbel top-k gate keeps exactly ``k`` of its ``C`` channels (no sparsity penalty and no
  controller: the sparsity is fixed by ``k``), so ``k`` is chosen *before* training: one keep
  ratio for every group, found by bisection so that the hard FLOPs of the gated network
  (``lp.hard_cost``, what ``collapse`` will give) remove the target fraction (the same search
  as ``benchmarks/bench_engine.py``). The gate logits start from the channels' magnitudes in
  the dense checkpoint (the deterministic top-k is then magnitude pruning), ``tau`` anneals
  linearly 5 -> 0.5 over the structure phase (Adam: network ``STRUCTURE_LR``, gates
  ``GATE_LR``) with the entropy regulariser, ``NetworkCollapse`` turns the network into
  the smaller dense one, and the rest of the budget fine-tunes it with the common SGD recipe.
* ``dpp_weight_2to4``: DPP at weight granularity, 2 of every 4 consecutive input weights of
  every conv / linear layer whose input channels divide by 4 (the 2:4 pattern of sparse
  tensor cores), mask logits started from the dense weights' magnitudes, trained for all the
  extra epochs with the common SGD recipe (``DynamicProbabilisticPruning`` callback: annealing,
  entropy term, mask logits in their own group), masks folded into the weights at the end.
  Shapes stay dense: the row's ``flops`` / ``flops_removed`` are ``lp.count_flops`` of the
  dense shapes like every other row (about 0 removed), and the sparse-hardware count goes in
  ``info``: ``kept_macs``, ``dense_macs``, ``kept_macs_ratio`` and ``kept_macs_label``
  (:func:`lightning_prune.dpp.kept_macs`, batch 1, conv/linear multiply-adds). The report
  lists them in their own table, labelled "kept multiply-adds". It runs once (no FLOPs
  target: 2:4 fixes the sparsity).
"""

from __future__ import annotations

import functools
import time
import warnings
from typing import Any

import torch
from torch import nn

import lightning_prune as lp
from benchmarks.compare.methods.base import Context, Outcome, register_method
from lightning_prune import dpp
from lightning_prune.callbacks import (
    DynamicProbabilisticPruning,
    NetworkCollapse,
    TemperatureAnnealing,
)
from lightning_prune.dpp._select import raw_weight, select_layers
from lightning_prune.module import ClassificationModule, SegmentationModule
from lightning_prune.penalties import SparsityPenalty

#: Weight of DPP's entropy regulariser (the paper: 1e-5 .. 5e-3).
ENTROPY_WEIGHT = 1e-3
#: SGD learning rate of the 2:4 mask logits relative to the network's: their gradients are
#: about 20x smaller than the weights'.
LOGIT_LR_FACTOR = 10.0
#: Adam learning rate of the network during ``dpp_feature``'s structure phase (paper 1's).
STRUCTURE_LR = 1e-3
#: Adam learning rate of the Gumbel top-k gate logits.
GATE_LR = 0.1


def gated_module(
    ctx: Context,
    gate: str,
    penalty: SparsityPenalty,
    gate_kwargs: dict[str, Any] | None = None,
) -> ClassificationModule | SegmentationModule:
    """The task's ready module around a copy of the dense network, set up for ``dpp_feature``'s
    structure phase: Adam (``STRUCTURE_LR``) with a cosine schedule per step, ``gate`` gates
    with their own learning rate (``GATE_LR``), and ``penalty``."""
    task, p = ctx.task, ctx.profile
    adam = functools.partial(torch.optim.Adam, lr=STRUCTURE_LR, weight_decay=p.weight_decay)
    kwargs: dict[str, Any] = {
        "num_classes": task.num_classes,
        "input_shape": task.input_shape,
        "optimizer": adam,
        "lr_scheduler": "cosine",
        "scheduler_interval": "step",
        "gate": gate,
        "penalty": penalty,
        "gate_lr": GATE_LR,
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


# ---------------------------------------------------------------------- feature-map k
def set_uniform_keep(model: nn.Module, keep: float) -> None:
    """Give every Gumbel top-k gate ``k = round(keep * C)`` (at least 1 and ``min_kept``)."""
    for gate in lp.get_gates(model):
        k = max(1, int(gate.min_kept), round(keep * gate.num_channels))
        gate.k = min(k, gate.num_channels)  # type: ignore[attr-defined]


def keep_ratio_for_target(model: nn.Module, removed: float, iterations: int = 20) -> float:
    """Bisect one keep ratio for all gates so the hard FLOPs remove ``removed`` of the dense.

    Leaves every gate at the ``k`` of the ratio whose removed fraction is closest to
    ``removed`` and returns that ratio.

    Example:
        >>> from lightning_prune.models import build_model
        >>> net = build_model("cifar_resnet20", num_classes=10)
        >>> _ = lp.augment(net, torch.zeros(1, 3, 32, 32), gate="gumbel_topk")
        >>> keep = keep_ratio_for_target(net, 0.5)
        >>> abs(1 - lp.hard_cost(net) / lp.dense_cost(net) - 0.5) < 0.02
        True
    """
    dense = float(lp.dense_cost(model))

    def removed_at(keep: float) -> float:
        set_uniform_keep(model, keep)
        return 1.0 - float(lp.hard_cost(model)) / dense

    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if removed_at(mid) > removed:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda keep: abs(removed_at(keep) - removed))
    set_uniform_keep(model, best)
    return best


@torch.no_grad()
def magnitude_logits(model: nn.Module) -> int:
    """Start every gate's logits from its channels' magnitudes (standardised per group).

    A channel's magnitude is the mean over the group's producers of the L1 norm of its output
    weights (convs, linears) or ``|gamma|`` (normalisation layers), each producer normalised by
    its mean. The deterministic top-k of the gate is then magnitude pruning of the dense
    network. Groups whose producers give no per-channel weight keep their uniform logits.

    Returns:
        The number of gates initialised.
    """
    modules = dict(model.named_modules())
    done = 0
    for group in lp.get_groups(model):
        scores = []
        for name in group.producers:
            weight = getattr(modules.get(name), "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.shape[0] != group.num_channels:
                continue
            score = weight.detach().abs().reshape(weight.shape[0], -1).sum(dim=1).float()
            scores.append(score / score.mean().clamp_min(1e-12))
        logits = getattr(group.gate, "logits", None)
        if not scores or not isinstance(logits, torch.Tensor):
            continue
        mean = torch.stack(scores).mean(dim=0)
        std = mean.std(unbiased=False).clamp_min(1e-12)
        logits.copy_(((mean - mean.mean()) / std).to(logits))
        done += 1
    return done


def run_feature(ctx: Context, target: float | None) -> Outcome:
    assert target is not None
    task, p = ctx.task, ctx.profile
    module = gated_module(
        ctx,
        "gumbel_topk",
        SparsityPenalty(terms=[{"name": "dpp_entropy", "weight": ENTROPY_WEIGHT}]),
        gate_kwargs={"noise_scale": 0.05},
    )
    start = time.perf_counter()
    module.configure_model()  # the gates now, so that k is fixed before training
    initialised = magnitude_logits(module)
    keep = keep_ratio_for_target(module, target)
    ratio_at_start = float(lp.hard_cost(module)) / float(lp.dense_cost(module))
    search_s = time.perf_counter() - start
    anneal = TemperatureAnnealing("linear", start=5.0, end=0.5, interval="step")
    collapse = NetworkCollapse(save=False, latency_repeats=0, verify=True)
    structure_s = ctx.runner.fit(module, task.datamodule, p.prune_epochs, [anneal, collapse])
    collapse_s, finetune_s = collapse_and_finetune(ctx, module)  # prune_epochs 0: magnitude top-k
    search_s += collapse_s
    info = {
        "gate": "gumbel_topk",
        "keep_ratio": keep,
        "hard_flops_ratio_at_start": ratio_at_start,
        "magnitude_initialised_gates": initialised,
        "entropy_weight": ENTROPY_WEIGHT,
        "temperature": [5.0, 0.5],
        "structure_epochs": p.prune_epochs,
        "finetune_epochs": p.finetune_epochs,
        "structure_s": structure_s,
        "finetune_s": finetune_s,
    }
    return Outcome(
        net=module.net.cpu(), train_s=structure_s + finetune_s, prune_s=search_s, info=info
    )


# ------------------------------------------------------------------------------ 2:4 weights
def not_groupable(model: nn.Module, n: int = 4) -> list[str]:
    """Conv / linear layers whose input channels (per group) ``n`` does not divide."""
    return [name for name, layer in select_layers(model) if raw_weight(layer).shape[1] % n]


def run_weight_2to4(ctx: Context, target: float | None) -> Outcome:
    task, p = ctx.task, ctx.profile
    module = task.plain_module(ctx.dense_net(), p.lr)
    callback = DynamicProbabilisticPruning(
        "weight",
        k=2,
        n=4,
        exclude=not_groupable(module),
        init="magnitude",
        entropy_weight=ENTROPY_WEIGHT,
        logit_lr=LOGIT_LR_FACTOR * p.lr,
        fold_on_fit_end=False,
        save=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers keeping all their weights stay dense, quietly
        masks = callback.apply(module)  # also when extra_epochs == 0
    train_s = ctx.runner.fit(module, task.datamodule, p.extra_epochs, [callback])
    start = time.perf_counter()
    net = module.net.cpu().eval()
    report = dpp.kept_macs(net, task.example(1))
    folded = dpp.fold_dpp_masks(net)
    prune_s = time.perf_counter() - start
    info = {
        "granularity": "weight",
        "pattern": "2:4",
        "masked_layers": len(masks),
        "dense_layers": sorted(set(callback.exclude)),
        "folded_layers": len(folded),
        "kept_macs": report.kept_macs,
        "dense_macs": report.dense_macs,
        "kept_macs_ratio": report.kept_ratio,
        "kept_macs_removed": 1.0 - report.kept_ratio,
        "kept_macs_label": report.label,
        "flops_note": (
            "flops / flops_removed count the dense shapes (zeros included), as lp.count_flops "
            "does for every method; the sparse-hardware count is kept_macs"
        ),
        "entropy_weight": ENTROPY_WEIGHT,
        "epochs": p.extra_epochs,
    }
    return Outcome(net=net.train(), train_s=train_s, prune_s=prune_s, info=info)


@register_method(
    "dpp_feature",
    family="dpp",
    label="DPP feature maps: gumbel_topk gates, k per group at the FLOPs target, tau 5->0.5",
)
def dpp_feature(ctx: Context, target: float | None) -> Outcome:
    return run_feature(ctx, target)


@register_method(
    "dpp_weight_2to4",
    family="dpp",
    label="DPP weights 2:4 (dense shapes; kept multiply-adds in info), magnitude init",
    pruning=False,
)
def dpp_weight_2to4(ctx: Context, target: float | None) -> Outcome:
    return run_weight_2to4(ctx, target)
