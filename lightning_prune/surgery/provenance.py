"""Where each element of a collapsed network's parameters comes from in the gated network.

Collapse slices parameters by rules that differ per layer family (convs, grouped convs,
attention projections, packed heads, per-channel tensors). Rather than repeating those rules,
:func:`parameter_sources` runs the collapse once on a *probe*: a copy of the network whose
parameters hold their own element numbers. Whatever the collapse keeps of a parameter then
says where each of its elements came from. Training state kept per parameter element (an
optimizer's momentum, Adam's moments) can follow the network through the collapse with it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lightning_prune.surgery.augmentation import get_gates
from lightning_prune.surgery.collapsing import collapse
from lightning_prune.surgery.plan import PLAN_ATTR

__all__ = ["parameter_sources"]


def _probe(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """A CPU copy of ``model`` whose non-gate parameters hold ``1..n``; their sizes by name.

    The copy is made with the numbered parameters in place of the originals, so a network on
    an accelerator is never duplicated there.
    """
    gates = {id(p) for gate in get_gates(model) for p in gate.parameters()}
    memo: dict[int, Any] = {}
    sizes = {}
    for name, param in model.named_parameters():
        if id(param) in gates:
            continue  # the gates decide the masks: they keep their values
        numbers = torch.arange(1, param.numel() + 1, dtype=torch.float64).view(param.shape)
        memo[id(param)] = nn.Parameter(numbers, requires_grad=param.requires_grad)
        sizes[name] = param.numel()
    return copy.deepcopy(model, memo).cpu(), sizes


def _computed(probe: nn.Module) -> list[str]:
    """Module paths whose collapsed parameters are computed, not sliced (frozen, constant)."""
    layers = probe.__dict__.get(PLAN_ATTR, {}).get("layers", {})
    return [path for path, e in layers.items() if e.get("frozen") or e.get("constant")]


def parameter_sources(model: nn.Module, round_to: int = 1) -> dict[str, torch.Tensor]:
    """For each parameter of ``collapse(model, round_to)``, where its elements come from.

    Args:
        model: an augmented model, as it is about to be collapsed (its masks decided).
        round_to: the ``round_to`` the collapse will use.

    Returns:
        By parameter name, a ``LongTensor`` of the collapsed parameter's shape holding, for each
        element, its flat index in ``model``'s parameter of the same name, or -1 where the
        collapse makes the element anew (a zeroed or padded channel). Parameters the collapse
        computes rather than slices (frozen re-parameterised convs, layers that became
        constants) are left out, and so is everything when the probe cannot be collapsed.

    Example:
        >>> import lightning_prune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        >>> gates = lp.augment(net, torch.randn(1, 3, 8, 8))
        >>> gates[0].set_mask(torch.tensor([True, False, True, False]))
        >>> parameter_sources(net)["0.bias"]
        tensor([0, 2])
        >>> parameter_sources(net)["3.weight"].flatten().tolist()
        [0, 2, 4, 6]
    """
    probe, sizes = _probe(model)
    try:
        collapse(probe, round_to=round_to, inplace=True, verify=False)
    except (RuntimeError, TypeError, ValueError):  # a layer computing from mixed dtypes
        return {}
    computed = _computed(probe)
    sources = {}
    for name, param in probe.named_parameters():
        if name not in sizes or any(name.startswith(f"{path}.") for path in computed):
            continue
        values = param.detach()
        numbers = values.round()
        if values.dtype != torch.float64 or not torch.equal(numbers, values):
            continue
        if bool((numbers < 0).any()) or bool((numbers > sizes[name]).any()):
            continue
        sources[name] = numbers.long() - 1  # (the probe is on the CPU)
    return sources
