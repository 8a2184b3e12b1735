"""Joint 8-bit quantisation of (masked) weights: straight-through fake-quant and int8 export.

* Weights: symmetric per-output-channel int8, ``scale_c = max|w_c| / 127``,
  ``q = clamp(round(w / scale), -127, 127)``. During training a :class:`FakeQuantWeight`
  parametrization is appended after the DPP mask, so the forward sees ``dequant(quant(w * m))``
  and the gradient passes straight through (identity inside the representable range).
* Activations (optional): symmetric per-tensor int8 on each selected layer's *input*, with a
  running max-abs observer (EMA, frozen in eval).
* :func:`export_int8` writes a plain ``dict`` of tensors (loadable with
  ``torch.load(..., weights_only=True)``) holding real ``torch.int8`` weights plus float scales;
  :func:`load_int8` dequantises it into a model for evaluation.

Export format (keys mirror a plain, unparametrized ``state_dict``):
``<layer>.weight`` int8 ``[C_out, ...]``, ``<layer>.weight_scale`` float32 ``[C_out]``,
``<layer>.input_scale`` float32 scalar (only with activation fake-quant), every other entry
(biases, BN statistics, ...) as in the float ``state_dict``.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.dpp._select import (
    Patterns,
    raw_weight,
    rebuild_chain,
    select_layers,
    weight_chain,
)
from lightning_prune.dpp.apply import fold_dpp_masks
from lightning_prune.dpp.masks import TopKMask

__all__ = [
    "FakeQuantActivation",
    "FakeQuantWeight",
    "disable_fake_quant",
    "enable_fake_quant",
    "export_int8",
    "fake_quantize",
    "has_dpp",
    "load_int8",
    "quantize_weight",
    "strip_dpp",
    "weight_scale",
]

QMIN, QMAX = -127, 127
_INPUT_QUANT = "lp_input_quant"
_PARAM_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.(.+)$")


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, qmin: int = QMIN, qmax: int = QMAX
) -> torch.Tensor:
    """Round-to-grid with a clipped straight-through gradient.

    Forward: ``clamp(round(x / scale), qmin, qmax) * scale``. Backward: identity where
    ``qmin * scale <= x <= qmax * scale``, zero outside. ``scale`` gets no gradient.

    Example:
        >>> fake_quantize(torch.tensor([0.26, -3.0]), torch.tensor(0.1), -10, 10).tolist()
        [0.30000001192092896, -1.0]
    """
    scale = scale.detach()
    q = torch.clamp(torch.round(x / scale), qmin, qmax) * scale
    inside = (x >= qmin * scale) & (x <= qmax * scale)
    return torch.where(inside, x + (q - x).detach(), q.detach())


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric per-output-channel scale ``max|w_c| / 127``, shape ``[C_out]``."""
    w = weight.detach()
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1) if w.dim() > 1 else w.abs()
    return (amax / QMAX).clamp_min(1e-12).float()


def _per_channel(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (ndim - 1)))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, float32 per-channel scale)`` with ``weight ~= q * scale``."""
    scale = weight_scale(weight)
    q = torch.clamp(
        torch.round(weight.detach().float() / _per_channel(scale, weight.dim())), QMIN, QMAX
    )
    return q.to(torch.int8), scale


class FakeQuantWeight(nn.Module):
    """Parametrization: symmetric per-output-channel int8 fake-quant with an STE."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """``dequant(quant(weight))`` forward, identity gradient."""
        scale = _per_channel(weight_scale(weight), weight.dim()).to(weight.dtype)
        return fake_quantize(weight, scale)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """An assigned weight is stored as is (it is quantised on the next access)."""
        return weight


class FakeQuantActivation(nn.Module):
    """Symmetric per-tensor int8 fake-quant of a layer input with a running max-abs observer.

    Training updates ``running_absmax`` (an EMA with ``momentum``; the first batch sets it) and
    fake-quantises with it; eval only fake-quantises. Until observed, inputs pass unchanged.
    """

    running_absmax: torch.Tensor

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("running_absmax", torch.tensor(0.0))

    @property
    def scale(self) -> torch.Tensor:
        """Current per-tensor scale ``running_absmax / 127``."""
        return (self.running_absmax / QMAX).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Observe (training) and fake-quantise ``x``."""
        if self.training:
            with torch.no_grad():
                cur = x.detach().abs().amax().float()
                if float(self.running_absmax) == 0.0:
                    self.running_absmax.copy_(cur)
                else:
                    self.running_absmax.lerp_(cur, self.momentum)
        if float(self.running_absmax) == 0.0:
            return x
        return fake_quantize(x, self.scale.to(x.dtype))


def _input_quant_hook(module: nn.Module, args: tuple) -> tuple:
    quant = getattr(module, _INPUT_QUANT, None)
    if quant is None or not args:
        return args
    return (quant(args[0]), *args[1:])


def _has_input_hook(module: nn.Module) -> bool:
    return any(h is _input_quant_hook for h in module._forward_pre_hooks.values())


def _add_input_quant(module: nn.Module) -> FakeQuantActivation:
    quant = getattr(module, _INPUT_QUANT, None)
    if quant is None:
        quant = FakeQuantActivation().to(raw_weight(module).device)
        quant.train(module.training)
        module.add_module(_INPUT_QUANT, quant)
    if not _has_input_hook(module):
        module.register_forward_pre_hook(_input_quant_hook)
    return quant


def enable_fake_quant(
    model: nn.Module,
    weights: bool = True,
    activations: bool = False,
    include: Patterns = None,
    exclude: Patterns = (),
) -> list[str]:
    """Add straight-through int8 fake-quant to selected conv/linear layers (in place, idempotent).

    Weight fake-quant is appended after any DPP mask, so masked weights are quantised (zeros
    stay exactly zero). Call :func:`lightning_prune.dpp.apply_dpp` first or later: masks are
    always kept before the quantiser.

    Args:
        model: the model.
        weights: fake-quantise weights (symmetric per output channel).
        activations: also fake-quantise each selected layer's input (symmetric per tensor).
        include: name patterns of the layers (``None``: all conv/linear layers).
        exclude: name patterns of layers left in float.

    Returns:
        Names of the layers that carry fake-quant.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3))
        >>> enable_fake_quant(net)
        ['0']
    """
    names = []
    for name, module in select_layers(model, include, exclude):
        if weights and not any(isinstance(p, FakeQuantWeight) for p in weight_chain(module)):
            parametrize.register_parametrization(module, "weight", FakeQuantWeight())
        if activations:
            _add_input_quant(module)
        names.append(name)
    return names


def disable_fake_quant(model: nn.Module) -> list[str]:
    """Remove weight and activation fake-quant everywhere (DPP masks stay); returns layer names."""
    names = []
    for name, module in list(model.named_modules()):
        changed = False
        chain = weight_chain(module)
        if any(isinstance(p, FakeQuantWeight) for p in chain):
            rebuild_chain(module, [p for p in chain if not isinstance(p, FakeQuantWeight)])
            changed = True
        if hasattr(module, _INPUT_QUANT) and isinstance(
            getattr(module, _INPUT_QUANT), FakeQuantActivation
        ):
            delattr(module, _INPUT_QUANT)
            for hid, hook in list(module._forward_pre_hooks.items()):
                if hook is _input_quant_hook:
                    del module._forward_pre_hooks[hid]
            changed = True
        if changed:
            names.append(name)
    return names


def has_dpp(model: nn.Module) -> bool:
    """Whether ``model`` carries kernel/weight DPP masks or int8 fake-quant."""
    return any(
        isinstance(m, (TopKMask, FakeQuantWeight, FakeQuantActivation)) for m in model.modules()
    )


def strip_dpp(model: nn.Module, fold: bool = True) -> list[str]:
    """Remove every kernel/weight DPP mask and all fake-quant from ``model`` (in place).

    What is left is a plain network of the same shapes: with ``fold=True`` the masks' zeros are
    baked into the weights (the pruned network, in float), with ``fold=False`` they are dropped
    (the unmasked, dense network the masks were put on). Used to measure either without the
    cost of computing masks and fake-quant in every forward.

    Returns:
        Names of the layers that changed.

    Example:
        >>> from lightning_prune.dpp import apply_dpp
        >>> net = nn.Sequential(nn.Linear(8, 4))
        >>> _ = apply_dpp(net, "weight", k=2, n=4)
        >>> strip_dpp(net, fold=False), has_dpp(net), bool((net[0].weight != 0).all())
        (['0'], False, True)
    """
    changed = set(fold_dpp_masks(model)) if fold else set()
    for name, module in list(model.named_modules()):
        chain = weight_chain(module)
        if any(isinstance(p, TopKMask) for p in chain):
            rebuild_chain(module, [p for p in chain if not isinstance(p, TopKMask)])
            changed.add(name)
    changed.update(disable_fake_quant(model))
    return sorted(changed, key=list(dict(model.named_modules())).index)


def _deployed_weight(module: nn.Module) -> torch.Tensor:
    """Weight with deterministic DPP masks and other parametrizations, fake-quant skipped."""
    weight = raw_weight(module).detach()
    for p in weight_chain(module):
        if isinstance(p, TopKMask):
            weight = p.apply_hard(weight)
        elif not isinstance(p, FakeQuantWeight):
            weight = p(weight)
    return weight.detach()


@torch.no_grad()
def export_int8(
    model: nn.Module, include: Patterns = None, exclude: Patterns = ()
) -> dict[str, torch.Tensor]:
    """Export ``model`` with int8 conv/linear weights and float scales.

    DPP masks are applied deterministically (their logits are not exported); parametrized
    tensors appear under their plain names. Save the result with ``torch.save`` and read it
    back with ``torch.load(path, weights_only=True)``.

    Args:
        model: the (possibly DPP-masked, fake-quantised) model.
        include: name patterns of the layers to quantise (``None``: all conv/linear layers).
        exclude: name patterns of layers kept in float.

    Returns:
        A flat ``dict[str, Tensor]`` in the format described in the module docstring.
    """
    layers = dict(select_layers(model, include, exclude))
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        match = _PARAM_KEY.match(key)
        if match is not None:
            prefix, tensor_name, rest = match.groups()
            if rest != "original":
                continue  # parametrization internals (mask logits ...)
            owner = modules[prefix or ""]
            plain = f"{prefix}.{tensor_name}" if prefix else tensor_name
            value = (
                _deployed_weight(owner) if tensor_name == "weight" else getattr(owner, tensor_name)
            )
            state[plain] = value.detach().clone()
            continue
        head, _, leaf = key.rpartition(".")
        if head.endswith(_INPUT_QUANT) and leaf == "running_absmax":
            prefix = head[: -len(_INPUT_QUANT)].rstrip(".")
            quant = modules[head]
            state[f"{prefix}.input_scale" if prefix else "input_scale"] = (
                quant.scale.detach().clone()
            )
            continue
        state[key] = value.detach().clone()
    for name, module in layers.items():
        key = f"{name}.weight" if name else "weight"
        q, scale = quantize_weight(_deployed_weight(module))
        state[key] = q
        state[f"{key}_scale"] = scale
    return state


@torch.no_grad()
def load_int8(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> nn.Module:
    """Dequantise an :func:`export_int8` dict into ``model`` (in place) for evaluation.

    DPP masks on ``model`` are folded and weight fake-quant removed first (the exported weights
    already carry both). Layers with an ``input_scale`` get activation fake-quant with that
    (frozen in eval) scale, so the model computes what the int8 deployment computes.

    Args:
        model: an instance of the exported architecture.
        state: the exported dict.
        strict: passed to ``load_state_dict``.

    Returns:
        ``model``.
    """
    fold_dpp_masks(model)
    for module in model.modules():
        chain = weight_chain(module)
        if any(isinstance(p, FakeQuantWeight) for p in chain):
            rebuild_chain(module, [p for p in chain if not isinstance(p, FakeQuantWeight)])
    modules = dict(model.named_modules())
    floats: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("weight_scale"):
            continue
        if key == "input_scale" or key.endswith(".input_scale"):
            prefix = key[: -len("input_scale")].rstrip(".")
            _add_input_quant(modules[prefix])
            head = f"{prefix}.{_INPUT_QUANT}" if prefix else _INPUT_QUANT
            floats[f"{head}.running_absmax"] = (value * QMAX).reshape(())
            continue
        scale = state.get(f"{key}_scale")
        if scale is not None:
            value = value.float() * _per_channel(scale.float(), value.dim())
        floats[key] = value
    model.load_state_dict(floats, strict=strict)
    return model
