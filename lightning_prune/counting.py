"""Exact counts: FLOPs through ``torch.utils.flop_counter`` and parameters without gates."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.graph.trace import ExampleInputs, as_input_tuple

#: Attribute of an augmented model holding its gates (an ``nn.ModuleDict``).
GATES_ATTR = "lp_gates"


def _run_counted(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> FlopCounterMode:
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """FLOPs of one forward pass on ``example_inputs`` (``torch.utils.flop_counter`` convention).

    A multiply-add counts as 2 FLOPs; normalisation and activations are not counted.

    Example:
        >>> count_flops(nn.Linear(4, 3), torch.randn(2, 4))
        48
    """
    return int(_run_counted(model, as_input_tuple(example_inputs)).get_total_flops())


def module_flops(model: nn.Module, example_inputs: ExampleInputs) -> tuple[int, dict[str, int]]:
    """Total FLOPs and the FLOPs of every module (by path, all calls summed)."""
    counter = _run_counted(model, as_input_tuple(example_inputs))
    per_module: dict[str, int] = {}
    for name, counts in counter.get_flop_counts().items():
        path = name.split(".", 1)[1] if "." in name else ""
        per_module[path] = int(sum(counts.values()))
    return int(counter.get_total_flops()), per_module


def count_params(model: nn.Module) -> int:
    """Number of parameters, excluding gates."""
    gates = getattr(model, GATES_ATTR, None)
    skip = {id(p) for p in gates.parameters()} if isinstance(gates, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
