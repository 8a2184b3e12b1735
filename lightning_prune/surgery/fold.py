"""Fold batch normalisation into the preceding conv / linear layer for inference.

A collapsed network keeps every BatchNorm of the original. At inference a BatchNorm is a
per-channel affine map, so it can be merged into the weights and bias of the layer that feeds
it, removing one full read and write of the feature map per layer. That memory traffic scales
with the number of channels while a conv's arithmetic scales with its square, so it weighs
more in a pruned network than in the dense one: folding is what lets a thin network run at the
speed its FLOPs promise (measured in ``benchmarks/bench_engine.py``).

Only exact folds are made: a BatchNorm using running statistics whose single input is the
output of a conv (1-3d, any groups) or linear layer used nowhere else, each module called
once. Everything else is left as it is. The result is for inference: it has no BatchNorm left
to train, so fold after training (and after :func:`~lightning_prune.save_pruned`, whose plan
describes the unfolded network).
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import cast

import torch
from torch import nn

from lightning_prune.errors import CollapseError
from lightning_prune.graph.ir import Graph
from lightning_prune.graph.trace import ExampleInputs, as_input_tuple, capture
from lightning_prune.surgery.collapsing import _compare
from lightning_prune.surgery.constant import replace_module

__all__ = ["fold_batchnorm", "foldable_pairs"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_Producer = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear  # the classes in _PRODUCERS


def _foldable_norm(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.running_mean is not None
        and module.running_var is not None
    )


def foldable_pairs(model: nn.Module, graph: Graph) -> list[tuple[str, str]]:
    """``(producer path, norm path)`` of every BatchNorm that can be folded exactly.

    Args:
        model: the model ``graph`` was captured from.
        graph: its captured graph (see :func:`lightning_prune.graph.trace.capture`).
    """
    calls = Counter(node.module for node in graph.nodes if node.module is not None)
    users: Counter[str] = Counter(
        name for node in graph.nodes for name in node.inputs if name is not None
    )
    by_name = {node.name: node for node in graph.nodes}
    pairs = []
    for node in graph.nodes:
        if node.kind != "norm" or node.module is None or len(node.inputs) != 1:
            continue
        source = by_name.get(node.inputs[0] or "")
        if source is None or source.module is None or users[source.name] != 1:
            continue
        if calls[node.module] != 1 or calls[source.module] != 1:
            continue
        norm, producer = model.get_submodule(node.module), model.get_submodule(source.module)
        if (
            _foldable_norm(norm)
            and type(producer) in _PRODUCERS
            and cast(_Producer, producer).weight.shape[0] == norm.num_features
        ):
            pairs.append((source.module, node.module))
    return pairs


@torch.no_grad()
def _fold(producer: _Producer, norm: nn.modules.batchnorm._BatchNorm) -> None:
    weight = producer.weight
    # running statistics are present: foldable_pairs only pairs norms passing _foldable_norm
    running_mean = cast(torch.Tensor, norm.running_mean)
    running_var = cast(torch.Tensor, norm.running_var)
    var = running_var.double()
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    bias = producer.bias.double() if producer.bias is not None else torch.zeros_like(scale)
    view = (-1,) + (1,) * (weight.dim() - 1)
    producer.weight = nn.Parameter((weight.double() * scale.view(view)).to(weight.dtype))
    producer.bias = nn.Parameter((bias * scale + shift).to(weight.dtype))


def fold_batchnorm(
    model: nn.Module,
    example_inputs: ExampleInputs,
    inplace: bool = False,
    verify: bool = True,
    rtol: float = 1e-4,
) -> nn.Module:
    """Return ``model`` with every foldable BatchNorm merged into its conv / linear layer.

    Works on any model the engine can trace (dense, augmented-then-collapsed, or one you
    built); folded norms become ``nn.Identity``. Eval-mode outputs are unchanged, which is
    checked on ``example_inputs``.

    Args:
        model: the network (its BatchNorms' running statistics are used).
        example_inputs: a batch shaped like the real input (a tensor or a tuple of tensors).
        inplace: rewrite ``model`` itself; otherwise it is left untouched.
        verify: compare eval outputs before and after (two forward passes).
        rtol: tolerance of that check, relative to the largest output magnitude.

    Returns:
        The folded model, in eval mode (it is meant for inference).

    Raises:
        ExampleInputError: for missing or malformed example inputs.
        UntraceableModelError: when neither torch.fx nor torch.export can capture the model.
        CollapseError: if the folded model's outputs differ (``model`` is then untouched).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> folded = fold_batchnorm(net, torch.randn(1, 3, 8, 8))
        >>> folded
        Sequential(
          (0): Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
          (1): Identity()
          (2): ReLU()
        )
    """
    inputs = as_input_tuple(example_inputs)
    work = copy.deepcopy(model)
    work.eval()
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in inputs)
    with torch.no_grad():
        reference = work(*inputs) if verify else None
    pairs = foldable_pairs(work, capture(work, inputs))
    for producer, norm in pairs:
        _fold(
            cast(_Producer, work.get_submodule(producer)),
            cast(nn.modules.batchnorm._BatchNorm, work.get_submodule(norm)),
        )
        replace_module(work, norm, nn.Identity())
    if verify:
        with torch.no_grad():
            err = _compare(reference, work(*inputs), rtol)
        if not err <= rtol:
            raise CollapseError(
                f"Folding the BatchNorms of {type(model).__name__} changed its outputs (max "
                f"error {err:.3g} of the output scale, tolerance {rtol:g}); the model was not "
                "modified. Please report it with the model."
            )
    if not inplace:
        return work
    for producer, norm in pairs:
        replace_module(model, producer, work.get_submodule(producer))
        replace_module(model, norm, work.get_submodule(norm))
    return model.eval()
