"""Importance-ordered gate initialisation: start the relaxation from a magnitude ranking.

Every gate starts at the same keep-probability by default, so in a short structure-learning
phase the order in which channels close is decided by a few hundred noisy gradient steps (with
Adam, whose steps ignore the gradient's size, mostly by their sign). Seeding the gates with a
classic importance criterion gives the optimisation a sensible starting order that it then
refines: each unit's logit is shifted by up to ``±spread`` according to its global rank.

Criteria are registered by name in :data:`IMPORTANCE`; each maps a gated module whose output
carries a gate (a normalisation layer, or a conv / linear layer without one) to one score per
output channel. Scores are divided by their layer's mean before ranking, so layers of different
scales compete fairly; a unit shared by several layers (a residual stream) gets their mean.

Example:
    >>> import torch, lightning_prune as lp
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
    ...                     nn.Conv2d(4, 2, 1))
    >>> with torch.no_grad():
    ...     _ = net[1].weight.copy_(torch.tensor([0.1, 2.0, 1.0, 0.5]))
    >>> _ = lp.augment(net, torch.randn(1, 3, 8, 8))
    >>> init_gates(net, importance="magnitude", spread=2.0)
    >>> probs = lp.get_gates(net)[0].probabilities()
    >>> probs.argsort().tolist()  # least important first
    [0, 3, 2, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from lightning_prune._registry import Registry
from lightning_prune.surgery.masks import spec_indices
from lightning_prune.surgery.roles import projection
from lightning_prune.surgery.state import ModuleSpec, gate_modules, require_state

__all__ = [
    "IMPORTANCE",
    "init_gates",
    "register_importance",
    "unit_importance",
    "weight_importance",
]

ImportanceFn = Callable[[nn.Module, ModuleSpec], torch.Tensor]

#: Registered criteria: ``fn(module, spec) -> score per output channel``.
IMPORTANCE: Registry[ImportanceFn] = Registry("importance criterion")


def register_importance(name: str) -> Callable[[ImportanceFn], ImportanceFn]:
    """Decorator registering ``fn(module, spec) -> Tensor[out_channels]`` as ``name``."""
    return IMPORTANCE.register(name)


def _output_axis(module: nn.Module) -> int:
    """Axis of the output channels in ``module.weight`` (1 for transposed convs)."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


def _weight_norms(module: nn.Module, p: int) -> torch.Tensor:
    weight = cast(torch.Tensor, projection(module)[0]).detach().float()
    axis = _output_axis(module)
    if axis:
        weight = weight.transpose(0, axis)
    norms = weight.flatten(1).norm(p=p, dim=1)
    if axis and getattr(module, "groups", 1) > 1:  # [in, out/groups, ...] per group
        norms = norms.reshape(module.groups, -1).sum(0)
    return norms


@register_importance("magnitude")
def magnitude(module: nn.Module, spec: ModuleSpec) -> torch.Tensor:
    """|scale| of a normalisation layer (network slimming), else the filter's L2 norm."""
    if spec.role == "norm":
        weight = getattr(module, "weight", None)
        if weight is None:  # affine=False: every channel is alike
            return torch.ones(len(spec.out_units))
        return weight.detach().float().abs()
    return _weight_norms(module, 2)


@register_importance("l1")
def l1(module: nn.Module, spec: ModuleSpec) -> torch.Tensor:
    """L1 norm of each output filter (Li et al. 2017); norm layers fall back to |scale|."""
    if spec.role == "norm":
        return magnitude(module, spec)
    return _weight_norms(module, 1)


def unit_importance(model: nn.Module, importance: str = "magnitude") -> list[torch.Tensor]:
    """One score per unit of every gate, in gate order (layer-normalised, averaged).

    Raises:
        NotAugmentedError: when ``model`` has no gates.
        KeyError: for an unknown criterion (the message lists the choices).
    """
    state = require_state(model, "score gate units")
    fn = IMPORTANCE.get(importance)
    totals = [torch.zeros(g.num_units, dtype=torch.float64) for g in state.groups]
    counts = [torch.zeros(g.num_units, dtype=torch.float64) for g in state.groups]
    for spec in state.modules.values():
        if not spec.site:
            continue
        scores = fn(model.get_submodule(spec.path), spec).double().cpu().flatten()
        if scores.numel() != len(spec.out_units):
            raise ValueError(
                f"importance {importance!r} gave {scores.numel()} scores for "
                f"{spec.path!r}, which has {len(spec.out_units)} output channels."
            )
        scores = scores / scores.mean().clamp_min(1e-12)
        for channel, ref in enumerate(spec.out_units):
            if ref is not None:
                totals[ref[0]][ref[1]] += scores[channel]
                counts[ref[0]][ref[1]] += 1
    return [t / c.clamp_min(1) for t, c in zip(totals, counts)]


#: Spec roles whose module holds per-channel weight slices (see :func:`_slice_norms`).
_WEIGHT_ROLES = ("norm", "conv", "grouped")


def _slice_norms(
    module: nn.Module, spec: ModuleSpec, p: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """L-p norms of the weight slices of ``module`` per output and per input channel.

    ``spec.role`` is one of :data:`_WEIGHT_ROLES`. ``None`` where the module has no such
    per-channel weight slices (or their count does not match its channel map, e.g. the inputs
    of a grouped conv).
    """
    if spec.role == "norm":
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return None, None
        return weight.detach().abs().pow(p).reshape(-1), None
    weight = projection(module)[0]
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None, None
    weight = weight.detach().abs().pow(p)
    axis = _output_axis(module)
    outs = weight.transpose(0, axis).flatten(1).sum(1)
    groups = getattr(module, "groups", 1)
    if axis and groups > 1:  # transposed, grouped: [in, out / groups, ...]
        outs = outs.reshape(groups, -1).sum(0)
    ins = weight.transpose(0, 1 - axis).flatten(1).sum(1) if spec.role == "conv" else None
    return outs, ins


def weight_importance(model: nn.Module, p: int = 1) -> list[torch.Tensor | None]:
    """One score per unit of every gate: the weights the unit owns, as a group.

    A unit owns a slice of several layers: the output filters of the layers that produce it,
    its normalisation scales and the input channels of the layers that read it. Its score is
    the mean over those slices of their summed ``|w| ** p`` (Torch-Pruning's group magnitude
    criterion), read from the current weights, so a unit whose consumers ignore it ranks low
    even when its own filter is large.

    Args:
        model: an augmented model.
        p: the norm's power (1: L1).

    Returns:
        Per gate (group order), a float64 CPU tensor of one score per unit, or ``None`` for a
        group some of whose units own no slice read here (e.g. attention heads, whose weights
        sit in packed projections).

    Raises:
        NotAugmentedError: when ``model`` has no gates.

    Example:
        >>> import torch, lightning_prune as lp
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
        ...                     nn.Conv2d(2, 1, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.fill_(1.0)
        ...     _ = net[3].weight.copy_(torch.tensor([[[[3.0]], [[0.0]]]]))
        >>> _ = lp.augment(net, torch.zeros(1, 1, 4, 4))
        >>> weight_importance(net)[0].tolist()  # (filter 1 + scale 1 + consumer 3 or 0) / 3
        [1.6666666666666667, 0.6666666666666666]
    """
    state = require_state(model, "score units by their weights")
    indices = spec_indices(state)
    size = sum(g.num_units for g in state.groups) + 1  # the last entry: channels without gate
    slices: list[torch.Tensor] = []
    where: list[torch.Tensor] = []
    for path, spec in state.modules.items():
        if spec.role not in _WEIGHT_ROLES:  # e.g. heads of a functional attention call
            continue
        outs, ins = _slice_norms(model.get_submodule(path), spec, p)
        in_index, out_index = indices[path]
        for norms, index in ((outs, out_index), (ins, in_index)):
            if norms is not None and index is not None and norms.numel() == index.numel():
                slices.append(norms.reshape(-1).double())
                where.append(index)
    totals = torch.zeros(size, dtype=torch.float64)
    counts = torch.zeros(size, dtype=torch.float64)
    if slices:  # one device-to-host copy for the whole model
        index = torch.cat(where)
        totals.index_add_(0, index, torch.cat([n.to(slices[0].device) for n in slices]).cpu())
        counts.index_add_(0, index, torch.ones(index.numel(), dtype=torch.float64))
    scores: list[torch.Tensor | None] = []
    start = 0
    for group in state.groups:
        total = totals[start : start + group.num_units]
        count = counts[start : start + group.num_units]
        start += group.num_units
        scores.append(None if bool((count == 0).any()) else total / count)
    return scores


def init_gates(model: nn.Module, importance: str = "magnitude", spread: float = 2.0) -> None:
    """Shift every gate's keep-logit by ``spread * (2 * rank - 1)``, ``rank`` in ``[0, 1]``.

    Ranks are global (all units of all gates), so the least important unit of the network
    starts ``2 * spread`` logit units below the most important one and every gate keeps its
    family's mean starting point. Units with equal scores get equal shifts.

    Args:
        model: an augmented model.
        importance: a registered criterion (``"magnitude"``, ``"l1"``).
        spread: half-width of the shift, in logit units of the keep-probability (0: no-op).

    Raises:
        NotAugmentedError: when ``model`` has no gates.
        ValueError: for a negative ``spread``.
        NotImplementedError: for a gate family without
            :meth:`~lightning_prune.gates.ChannelGate.set_probabilities`.
    """
    if spread < 0:
        raise ValueError(f"spread must be >= 0, got {spread}.")
    scores = unit_importance(model, importance)
    gates = gate_modules(model)
    if spread == 0 or not gates:
        return
    flat = torch.cat(scores)
    # rank of each unit (ties share their mean rank), scaled to [0, 1]
    _, inverse, counts = flat.unique(return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(flat.dtype)
    ranks = (ends - (counts.to(flat.dtype) + 1) / 2)[inverse]
    ranks = ranks / max(flat.numel() - 1, 1)
    start = 0
    for gate, unit_scores in zip(gates, scores):
        n = unit_scores.numel()
        shift = spread * (2.0 * ranks[start : start + n] - 1.0)
        start += n
        with torch.no_grad():
            p = gate.probabilities().double().clamp(1e-6, 1 - 1e-6)
            gate.set_probabilities(torch.sigmoid(torch.logit(p) + shift.to(p.device)))
