"""(d) Lightning's ``ModelPruning`` callback, structured L1, at the same channel ratio.

``ModelPruning("ln_structured", pruning_norm=1, pruning_dim=0)`` masks the lowest-L1 output
channels of every conv (the classifier excluded) once, at the end of the first of the extra
epochs, and fine-tunes with the masks for the rest; ``make_pruning_permanent`` bakes the zeros
into the weights when training ends. The channel ratio is Torch-Pruning magnitude pruner's
uniform ratio at the same FLOPs target when that method ran, else ``1 - sqrt(1 - removed)``
(FLOPs of a plain CNN scale with the square of its width).

It keeps every tensor's shape: ``lp.count_flops`` counts the dense FLOPs and the latency shows
what masks alone buy (nothing).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import ModelPruning
from torch import nn

from benchmarks.compare.methods.base import Context, Outcome, register_method
from benchmarks.compare.tasks import head_layer


def _first_epoch(epoch: int) -> bool:
    return epoch == 0


def zero_channel_fraction(net: nn.Module) -> float:
    """Fraction of conv output channels whose weights are all zero."""
    zero = total = 0
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            norms = module.weight.detach().flatten(1).abs().sum(1)
            zero += int((norms == 0).sum())
            total += norms.numel()
    return zero / max(total, 1)


@register_method(
    "model_pruning",
    family="model_pruning",
    label="Lightning ModelPruning (ln_structured, L1, masks), same channel ratio",
    tasks=("classification",),
)
def model_pruning(ctx: Context, target: float | None) -> Outcome:
    assert target is not None
    task, p = ctx.task, ctx.profile
    ratio = ctx.shared.get("channel_ratio", {}).get(target)
    source = "tp_magnitude"
    if ratio is None:
        ratio, source = 1.0 - math.sqrt(1.0 - target), "1 - sqrt(1 - removed)"
    net = ctx.dense_net()
    head = head_layer(net)
    parameters = [
        (m, "weight") for m in net.modules() if isinstance(m, nn.Conv2d) and m is not head
    ]
    callback = ModelPruning(
        "ln_structured",
        parameters_to_prune=parameters,
        amount=float(ratio),
        apply_pruning=_first_epoch,
        use_global_unstructured=False,
        make_pruning_permanent=True,
        use_lottery_ticket_hypothesis=False,
        pruning_dim=0,
        pruning_norm=1,
        verbose=0,
    )
    module = task.plain_module(net, p.lr)
    seconds = ctx.runner.fit(module, task.datamodule, p.extra_epochs, [callback])
    final = module.net.cpu()
    with torch.no_grad():
        zeros = zero_channel_fraction(final)
    info = {
        "channel_ratio": float(ratio),
        "channel_ratio_source": source,
        "zero_channel_fraction": zeros,
        "pruned_after_epoch": 0,
    }
    return Outcome(net=final, train_s=seconds, info=info)
