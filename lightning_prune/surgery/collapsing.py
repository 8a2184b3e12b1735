"""Collapse: slice every gated layer to its kept channels and check the result."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import CollapseError
from lightning_prune.surgery.call_args import (
    apply_calls,
    compact_calls,
    installed_calls,
    plan_calls,
)
from lightning_prune.surgery.constant import replace_module
from lightning_prune.surgery.masks import (
    EffectiveMasks,
    constant_role,
    effective_masks,
    layer_role,
    spec_indices,
    to_constant,
)
from lightning_prune.surgery.params import get_tensor, slice_tensor
from lightning_prune.surgery.plan import (
    PLAN_ATTR,
    PLAN_BASE_VERSION,
    PLAN_CALLS_VERSION,
    PLAN_FORM_VERSION,
    PLAN_FORMAT,
    layer_signature,
)
from lightning_prune.surgery.reparam import freeze, is_reparameterised
from lightning_prune.surgery.resize import get_slicer, zero_channels
from lightning_prune.surgery.roles import COLLAPSERS, FINISHERS, merge_entry
from lightning_prune.surgery.state import (
    PruneState,
    gate_modules,
    require_state,
    strip_gates,
)


def _kept(
    idx: torch.Tensor, kept: torch.Tensor, dead: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept channel indices, and the positions (among kept) of zeroed ones."""
    keep = torch.nonzero(kept[idx]).flatten()
    return keep, torch.nonzero(dead[idx][keep]).flatten()


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out, key=str) for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return []


def _compare(ref: Any, got: Any, rtol: float) -> float:
    """Largest error relative to the output scale; raises on a structural difference."""
    a, b = _flatten(ref), _flatten(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise CollapseError(
            "The collapsed model's outputs differ in structure or shape from the gated model's."
        )
    worst = 0.0
    for x, y in zip(a, b):
        scale = max(float(x.detach().abs().max()), 1e-12) if x.numel() else 1.0
        err = float((x.detach() - y.detach()).abs().max()) if x.numel() else 0.0
        worst = max(worst, err / scale)
    return worst


def _reads_dead(in_flat: torch.Tensor | None, kept: torch.Tensor, dead: torch.Tensor) -> bool:
    """Whether every kept input channel of a layer is dead (it then computes a constant)."""
    if in_flat is None or not len(in_flat):
        return False
    return bool(dead[in_flat][kept[in_flat]].all())


def _shrinks(idx: torch.Tensor | None, flat: torch.Tensor | None) -> bool:
    return idx is not None and flat is not None and len(idx) < len(flat)


def _slice_all(model: nn.Module, state: PruneState, masks: EffectiveMasks) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    kept, dead, _ = masks.flat()
    for path, (in_flat, out_flat) in spec_indices(state).items():
        out_idx, out_dead = _kept(out_flat, kept, dead)
        in_idx = None if in_flat is None else _kept(in_flat, kept, dead)[0]
        collapser = COLLAPSERS.get(state.modules[path].role)
        if collapser is not None:  # not a layer (see surgery.roles)
            done = collapser(model, state.modules[path], out_idx)
            if done is not None and len(out_idx) < len(out_flat):
                owner, fragment = done
                kind = type(model.get_submodule(owner)).__name__
                merge_entry(layers.setdefault(owner, {"type": kind}), fragment)
            continue
        unchanged = len(out_idx) == len(out_flat) and (
            in_idx is None or in_flat is None or len(in_idx) == len(in_flat)
        )
        if unchanged and not len(out_dead) and not _reads_dead(in_flat, kept, dead):
            continue  # a dead channel (a closed unit kept for width) changes the layer too
        role = state.modules[path].role
        if role == "tensor":  # a closed channel's value is kept: it met zeros there before too
            layers[path] = slice_tensor(model, path, out_idx)
            continue
        module = model.get_submodule(path)
        entry: dict[str, Any] = {"type": type(module).__name__}  # the class before freezing
        if _shrinks(in_idx, in_flat) and role == "conv" and is_reparameterised(module):
            module = freeze(module)  # its weights depend on every input: freeze what it computes
            replace_module(model, path, module)
            entry["frozen"] = True
        entry.update(get_slicer(module)(module, in_idx, out_idx))
        if len(out_dead) and role != "channels":
            zero_channels(module, out_dead)
        merge_entry(layers.setdefault(path, {}), entry)
        if constant_role(
            layer_role(state.modules[path]), in_idx, out_idx, kept, dead, in_flat, out_flat
        ):
            layers[path]["constant"] = True
            replace_module(model, path, to_constant(module))
    for owner, entry in layers.items():
        for finish in FINISHERS:
            finish(model, owner, entry)
    return layers


def _run_compact(work: nn.Module, inputs: tuple[torch.Tensor, ...], name: str) -> Any:
    """The compact model's outputs; a compact model that cannot run is refused.

    The refusal names the innermost module whose forward failed.
    """
    stack: list[str] = []
    paths = {id(m): p for p, m in work.named_modules()}
    failed: list[str] = []

    def enter(module: nn.Module, args: Any) -> None:
        stack.append(paths.get(id(module), "?"))

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in work.modules()]
    handles += [m.register_forward_hook(leave) for m in work.modules()]  # not on errors
    try:
        with torch.no_grad():
            return work(*inputs)
    except Exception as err:
        failed.append(stack[-1] if stack else "")
        first = (str(err).strip().splitlines() or [""])[0]
        where = f" in `{failed[0]}` ({_type_at(work, failed[0])})" if failed[0] else ""
        refusal = CollapseError(
            f"Collapse of {name} produced a model that cannot run ({type(err).__name__}{where}: "
            f"{first}); the model was not modified. An operation between the gates and their "
            "consumers reads channels the engine removed; please report it with the model, or "
            "pass its module path in `exclude=` when augmenting."
        )
        refusal.failure = f"{type(err).__name__}{where}: {first}"  # type: ignore[attr-defined]
        raise refusal from err
    finally:
        for handle in handles:
            handle.remove()


def _type_at(model: nn.Module, path: str) -> str:
    try:
        return type(model.get_submodule(path)).__name__
    except AttributeError:
        return "?"


def _copy_root(model: nn.Module, work: nn.Module, entry: dict[str, Any]) -> None:
    """Give ``model`` its own collapsed tensors and attributes (it cannot be swapped itself)."""
    if "form" in entry:  # an attention module whose compact form reads its width differently
        model.__class__ = type(work)
    for name in entry.get("params", {}):
        setattr(model, name, getattr(work, name))
    for name, (_, new) in entry.get("attrs", {}).items():
        setattr(model, name, new)


def _strip(model: nn.Module) -> None:
    strip_gates(model)


def collapse(
    model: nn.Module,
    round_to: int = 1,
    inplace: bool = False,
    verify: bool = True,
    rtol: float = 1e-4,
    verify_inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]] = (),
) -> nn.Module:
    """Return the dense, smaller network equal to the gated ``model`` with hard masks.

    Every gated layer is sliced to its kept channels (conv, transposed conv, linear, batch /
    group / instance norm). A group whose channels all closed keeps one channel whose weights
    are zeroed, so its consumers see exactly the zeros they saw before; a residual branch
    behind such a group costs nothing but its norm. The result is checked against the gated
    model (eval mode, stored example input); it is never returned if it differs.

    Args:
        model: an augmented model (see :func:`~lightning_prune.augment`).
        round_to: round each group's kept width up to a multiple of this (opening the most
            probable closed channels), for hardware-friendly shapes; 1 keeps masks as they are.
        inplace: rewrite ``model`` itself and return it (for modules that must keep their
            identity, e.g. LightningModules); otherwise ``model`` is left untouched.
        verify: check output equality (recommended; ``False`` skips two forward passes).
        rtol: tolerance of the check, relative to the largest output magnitude.
        verify_inputs: more inputs to check on besides the stored example (each a tensor or
            a tuple of tensors; e.g. a real training batch and a random one).

    Returns:
        The compact model, without gates, in the same train/eval mode as ``model``.

    Raises:
        NotAugmentedError: if ``model`` has no gates.
        CollapseError: if the compact model would not reproduce the gated one.
    """
    state = require_state(model, "collapse")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}.")
    was_training = model.training
    work = copy.deepcopy(model)
    gates = gate_modules(work)
    masks = effective_masks(state, gates, round_to)
    if round_to > 1:
        for gate, kept in zip(gates, masks.kept):
            if int(kept.sum()) > int(gate.hard_mask().sum()):
                gate.set_mask(kept)
    device = next((p.device for p in work.parameters()), torch.device("cpu"))
    given = [state.example_inputs, *verify_inputs] if verify else []
    batches = [
        tuple(t.to(device) for t in ((b,) if isinstance(b, torch.Tensor) else b)) for b in given
    ]
    work.eval()
    with torch.no_grad():
        references = [work(*inputs) for inputs in batches]
    _strip(work)
    original = layer_signature(work)
    layers = _slice_all(work, state, masks)
    apply_calls(work, compact_calls(state, masks.flat()[0]))
    calls = installed_calls(work)
    work.eval()  # modules caching tensors made from their parameters drop them on train()
    if verify:
        err = max(
            _compare(ref, _run_compact(work, inputs, type(model).__name__), rtol)
            for ref, inputs in zip(references, batches)
        )
        if not err <= rtol:
            raise CollapseError(
                f"Collapse of {type(model).__name__} changed its outputs (max error {err:.3g} "
                f"of the output scale, tolerance {rtol:g}); the model was not modified. This "
                "means an operation between the gates and their consumers does not keep closed "
                "channels at zero; please report it with the model, or pass its module path in "
                "`exclude=` when augmenting."
            )
    work.__dict__[PLAN_ATTR] = {
        "format": PLAN_FORMAT,
        "version": PLAN_BASE_VERSION,
        "model": type(model).__name__,
        "layers": layers,
        "original": original,
    }
    if calls:
        work.__dict__[PLAN_ATTR].update(version=PLAN_CALLS_VERSION, calls=plan_calls(calls))
    if any("form" in entry for entry in layers.values()):
        work.__dict__[PLAN_ATTR]["version"] = PLAN_FORM_VERSION
    work.train(was_training)
    if not inplace:
        return work
    _strip(model)
    for path, entry in layers.items():
        if entry["type"] == "Parameter":
            owner, _, name = path.rpartition(".")
            setattr(model.get_submodule(owner), name, get_tensor(work, path))
        elif not path:  # the model's own tensors (a ViT's class token, position embedding)
            _copy_root(model, work, entry)
        else:
            replace_module(model, path, work.get_submodule(path))
    apply_calls(model, calls, after=False)
    model.__dict__[PLAN_ATTR] = work.__dict__[PLAN_ATTR]
    return model
