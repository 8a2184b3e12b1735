"""How gates act on a model: a site module per gated layer, fused into BatchNorm when possible.

A *site* is a layer whose output is multiplied, channel by channel, by gate values. For an
affine ``BatchNorm{1,2,3}d`` the multiply is folded into the normalisation's affine parameters
(``F.batch_norm(x, ..., weight * g, bias * g)``): the same result with no extra pass over the
activations. Any other layer gets a forward hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.gates.base import ChannelGate
from lightning_prune.graph.ops import Call, Op, register_op

SITE_ATTR = "lp_site"

#: (gate or None for fixed channels, unit positions or None for "all units in order", width)
Segment = tuple[ChannelGate | None, list[int] | None, int]


class SiteGate(nn.Module):
    """Builds the per-channel gate vector of one site from one or more gates' values."""

    def __init__(self, segments: list[Segment]) -> None:
        super().__init__()
        self._gates = tuple(g for g, _, _ in segments)  # a tuple: not registered twice
        self._widths = tuple(w for _, _, w in segments)
        for i, (_, idx, _) in enumerate(segments):
            buf = torch.tensor(idx, dtype=torch.long) if idx is not None else None
            self.register_buffer(f"idx{i}", buf, persistent=False)

    def forward(self) -> torch.Tensor:
        parts: list[torch.Tensor | None] = []
        ref: torch.Tensor | None = None
        for i, gate in enumerate(self._gates):
            if gate is None:
                parts.append(None)
                continue
            values = gate()
            ref = values
            idx = getattr(self, f"idx{i}")
            parts.append(values if idx is None else values[idx])
        assert ref is not None
        if len(parts) == 1:
            return cast(torch.Tensor, parts[0])  # its gate is set: ``ref`` is not None
        full = [p if p is not None else ref.new_ones(w) for p, w in zip(parts, self._widths)]
        return torch.cat(full)


@register_op(SiteGate, leaf=True)
def _site_gate(call: Call) -> Op:
    """A site's gate vector, called inside a traced augmented model: reads no activations."""
    return Op("ignore")


def _broadcast(values: torch.Tensor, ndim: int, axis: int = 1) -> torch.Tensor:
    if axis in (-1, ndim - 1):
        return values
    return values.view(1, -1, *([1] * (ndim - 2)))


def site_axis(module: nn.Module) -> int:
    """Channel axis of a layer's output: last for linear layers (tokens), else 1 (NCHW)."""
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or getattr(module, "kind", None) == "linear":
        return -1
    return 1


class GateHook:
    """Forward hook multiplying a layer's output by its site's gate vector.

    Args:
        axis: the output's channel axis (1: NCHW; -1: the last, for linear layers).
    """

    def __init__(self, axis: int = 1) -> None:
        self.axis = axis

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        values = getattr(module, SITE_ATTR)()
        return output * _broadcast(values.to(output.dtype), output.ndim, self.axis)


class ResetSamples:
    """Forward pre-hook on the model root: stochastic gates draw one sample per forward."""

    def __init__(self, gates: list[ChannelGate]) -> None:
        self._gates = tuple(gates)

    def __call__(self, module: nn.Module, args: tuple) -> None:
        for gate in self._gates:
            gate.reset_sample()


class _GatedBatchNormMixin:
    """BatchNorm whose affine parameters are multiplied by the site's gate values."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        bn._check_input_dim(input)
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        track = not bn.training or bn.track_running_stats
        g = getattr(bn, SITE_ATTR)().to(bn.weight.dtype)
        return F.batch_norm(
            input,
            bn.running_mean if track else None,
            bn.running_var if track else None,
            bn.weight * g,
            bn.bias * g,
            use_batch,
            factor,
            bn.eps,
        )


class GatedBatchNorm1d(_GatedBatchNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with a fused gate."""


class GatedBatchNorm2d(_GatedBatchNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a fused gate."""


class GatedBatchNorm3d(_GatedBatchNormMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with a fused gate."""


_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: GatedBatchNorm1d,
    nn.BatchNorm2d: GatedBatchNorm2d,
    nn.BatchNorm3d: GatedBatchNorm3d,
}
_UNFUSED = {v: k for k, v in _FUSED.items()}


class GatedSequential(nn.Sequential):
    """An ``nn.Sequential`` root that holds gates: its forward skips the gate container."""

    def __iter__(self):
        return iter(m for k, m in self._modules.items() if k != GATES_KEY)

    def __len__(self) -> int:
        return sum(1 for k in self._modules if k != GATES_KEY)


GATES_KEY = "lp_gates"


def prepare_root(model: nn.Module) -> None:
    """Let a plain ``nn.Sequential`` root carry a gate container without running it."""
    if type(model) is nn.Sequential:
        model.__class__ = GatedSequential


def restore_root(model: nn.Module) -> None:
    """Undo :func:`prepare_root`."""
    root_cls: type[nn.Module] = type(model)  # compared via a local: no narrowing of ``model``
    if root_cls is GatedSequential:
        model.__class__ = nn.Sequential


#: Fused site classes for a base class and its subclasses: ``base -> (fused, applies, keep)``.
_FUSED_BY_BASE: dict[
    type[nn.Module], tuple[type[nn.Module], Callable[[nn.Module], bool], bool]
] = {}
#: Instance attribute remembering the class a registered fused site replaced.
ORIGINAL_CLASS = "_lp_original_class"


def register_fused_site(
    base: type[nn.Module],
    fused: type[nn.Module],
    applies: Callable[[nn.Module], bool],
    keep: bool = False,
) -> None:
    """Gate ``base`` layers (and subclasses, when ``applies``) by switching to ``fused``.

    ``fused`` reads the site's gate values (``getattr(self, SITE_ATTR)()``) in its forward.

    Args:
        base: the layer class (its subclasses too).
        fused: the class a site switches to.
        applies: whether a given layer can switch.
        keep: keep ``fused`` once the site is removed (collapse) instead of restoring the
            original class (when ``fused`` is also the compact layer).
    """
    _FUSED_BY_BASE[base] = (fused, applies, keep)


def _fused_class(module: nn.Module) -> tuple[type[nn.Module] | None, bool]:
    fused = _FUSED.get(type(module))
    if fused is not None and getattr(module, "affine", False):
        return fused, False
    for cls in type(module).__mro__:
        if cls in _FUSED_BY_BASE:
            candidate, applies, _ = _FUSED_BY_BASE[cls]
            return (candidate, True) if applies(module) else (None, False)
    return None, False


def _keeps(cls: type[nn.Module]) -> bool:
    return any(fused is cls and keep for fused, _, keep in _FUSED_BY_BASE.values())


def attach_site(module: nn.Module, segments: list[Segment]) -> None:
    """Make ``module`` a gate site."""
    module.add_module(SITE_ATTR, SiteGate(segments))
    fused, registered = _fused_class(module)
    if fused is not None:
        if registered:
            module.__dict__[ORIGINAL_CLASS] = type(module)
        module.__class__ = fused
    else:
        module.register_forward_hook(GateHook(site_axis(module)))


def switched_classes(model: nn.Module) -> bool:
    """Whether a site of ``model`` switched a layer to a registered fused class."""
    return any(ORIGINAL_CLASS in m.__dict__ for m in model.modules())


def reattach_sites(model: nn.Module) -> int:
    """Make every site act again after its module was replaced by another class.

    ``Trainer(sync_batchnorm=True)`` swaps each ``BatchNorm`` for a ``SyncBatchNorm`` after
    ``configure_model``; the site (a child module) moves along, but the gated forward does not,
    so the gates would silently stop acting while their penalty kept training. Such sites get
    the forward hook instead (``norm(x) * g`` equals the fused ``weight * g``, ``bias * g``).

    Returns:
        The number of sites re-attached.
    """
    count = 0
    for module in model.modules():
        if SITE_ATTR not in module._modules or type(module) in _UNFUSED:
            continue
        if ORIGINAL_CLASS in module.__dict__:  # a registered fused class: it reads the gate
            continue
        if any(isinstance(h, GateHook) for h in module._forward_hooks.values()):
            continue
        module.register_forward_hook(GateHook(site_axis(module)))
        count += 1
    return count


def detach_sites(model: nn.Module) -> None:
    """Remove every site, hook and fused class from ``model`` (in place)."""
    for module in model.modules():
        if SITE_ATTR in module._modules:
            del module._modules[SITE_ATTR]
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, GateHook):
                del module._forward_hooks[key]
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, ResetSamples):
                del module._forward_pre_hooks[key]
        plain = module.__dict__.pop(ORIGINAL_CLASS, None) or _UNFUSED.get(type(module))
        if plain is not None and not _keeps(type(module)):
            module.__class__ = plain
