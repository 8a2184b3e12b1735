"""Collapse of attention: per-channel parameters, attention FLOPs and the head count.

Three analysis roles that are not layers (see :mod:`~lightning_prune.surgery.roles`):

* ``"param"``: a parameter used with one value per channel (a relative position bias table
  with one column per head, a layer scale, a position embedding) is sliced with them;
* ``"op"``: a batched matrix product or fused attention, whose FLOPs scale with the kept
  heads (measured with ``torch.utils.flop_counter`` on the traced shapes, so the costs follow
  its convention on the model's device);
* ``"heads"``: a reshape that splits channels into heads. Collapse updates the integers the
  module reads to make that reshape (the head count, e.g. ``num_heads``, and the attention
  width, e.g. ``attn_dim``), found among the module's attributes by their values.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_prune.errors import CollapseError, PlanMismatchError
from lightning_prune.graph.channels import ModuleChannels
from lightning_prune.graph.ir import Graph, OpNode
from lightning_prune.surgery.forms import to_compact_form
from lightning_prune.surgery.roles import (
    COLLAPSERS,
    FINISHERS,
    PLAN_KEYS,
    SPEC_BUILDERS,
)
from lightning_prune.surgery.state import ModuleSpec, PruneState, UnitRef

__all__ = ["head_attributes", "op_flops", "refresh_op_flops", "shape_attributes"]

#: Attribute names that may hold a head count (``num_heads``, ``heads``, ``n_head``).
_HEADS = re.compile(r"head", re.IGNORECASE)
#: Attribute names that hold a per-head size, never a head count or an attention width.
_PER_HEAD = re.compile(r"head_?dim|dim_?head|head_?size|key_?dim|val_?dim|scale", re.I)
#: Attribute names of a module's input width (unchanged by pruning its heads).
_INPUT = re.compile(r"^(dim|in_\w+|input_\w+)$")


# ------------------------------------------------------------------------------ params
def _owner(model: nn.Module, qualified: str) -> tuple[nn.Module, str, str]:
    owner, _, name = qualified.rpartition(".")
    return model.get_submodule(owner), owner, name


def _param_spec(
    m: ModuleChannels, refs: list[UnitRef], model: nn.Module, graph: Graph
) -> ModuleSpec:
    module, owner, name = _owner(model, m.path)
    value = getattr(module, name)
    axis = int(m.attrs["axis"])
    numel = int(value.numel()) if isinstance(value, torch.Tensor) else 0
    params = numel if name in module._parameters else 0
    attrs = {"owner": owner, "name": name, "axis": axis, "views": m.attrs.get("views", [])}
    return ModuleSpec(
        m.path, "param", type(module).__name__, None, refs, 0.0, 0, params, False, attrs
    )


def _slice_tensor(module: nn.Module, name: str, axis: int, idx: torch.Tensor) -> list[int]:
    value = getattr(module, name)
    old = int(value.shape[axis])
    new = value.detach().index_select(axis, idx.to(value.device)).clone()
    if name in module._parameters:
        setattr(module, name, nn.Parameter(new, requires_grad=value.requires_grad))
    else:
        module._buffers[name] = new
    return [axis, old, int(new.shape[axis])]


def _collapse_param(
    model: nn.Module, spec: ModuleSpec, kept: torch.Tensor
) -> tuple[str, dict[str, Any]]:
    module, owner, name = _owner(model, spec.path)
    entry: list[Any] = _slice_tensor(module, name, int(spec.attrs["axis"]), kept)
    views = spec.attrs.get("views")
    return owner, {"params": {name: [*entry, views] if views else entry}}


def shape_attributes(module: nn.Module, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Shape tuples of ``module`` to update after its parameters were sliced.

    A module that views a parameter to a stored shape (``table[index].view(self.bias_shape)``
    with ``bias_shape = (N, N, num_heads)``) must read the new size. The analysis records the
    shapes each parameter was viewed to and where its sliced dimension lies in them
    (``[axis, old, new, views]``); a tuple attribute equal to such a shape is updated there.
    """
    updates: dict[str, list[Any]] = {}
    for entry in params.values():
        _, old, new = entry[:3]
        views = entry[3] if len(entry) > 3 else []
        for name, value in vars(module).items():
            if name.startswith("_") or not isinstance(value, (tuple, list)) or old == new:
                continue
            for shape, dim in views:
                if list(value) == list(shape) and value[dim] == old:
                    changed = list(value)
                    changed[dim] = new
                    updates[name] = [list(value), changed]
    return updates


def _finish_params(model: nn.Module, path: str, entry: dict[str, Any]) -> None:
    if "params" not in entry:
        return
    module = model.get_submodule(path)
    updates = shape_attributes(module, entry["params"])
    for name, (_, new) in updates.items():
        setattr(module, name, type(getattr(module, name))(new))
    if updates:
        entry.setdefault("attrs", {}).update(updates)


def _apply_params(model: nn.Module, path: str, params: dict[str, list[int]]) -> None:
    module = model.get_submodule(path)
    for name, (axis, old, new, *_) in params.items():
        value = getattr(module, name, None)
        if not isinstance(value, torch.Tensor) or int(value.shape[axis]) != old:
            raise PlanMismatchError(
                f"The channel plan slices `{path}.{name}` from {old} to {new} along dim {axis}, "
                f"but the model's tensor has shape {getattr(value, 'shape', None)}."
            )
        _slice_tensor(module, name, axis, torch.arange(new))


# --------------------------------------------------------------------------------- ops
def _shapes(graph: Graph, node: OpNode) -> list[Any]:
    by_name = {n.name: n.shape for n in graph.nodes}
    return [by_name.get(i) if i is not None else None for i in node.inputs]


def op_flops(graph: Graph, node: OpNode, model: nn.Module) -> int:
    """FLOPs of one matmul / attention node, as ``torch.utils.flop_counter`` counts them.

    The operation is run on zeros of the traced shapes under a ``FlopCounterMode`` on the
    model's device (fused attention is counted on some devices and not on others). For an
    ``nn.MultiheadAttention`` call: the module's FLOPs less its two projections.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    shapes = _shapes(graph, node)
    if node.kind == "mha":  # measured on the augmented model (see refresh_op_flops)
        return 0
    if any(not isinstance(s, tuple) for s in shapes[:2]):
        return 0

    if node.kind == "attention" and any(not isinstance(s, tuple) for s in shapes[:3]):
        return 0

    def zeros(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=device)

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        if node.kind == "matmul":
            torch.matmul(zeros(shapes[0]), zeros(shapes[1]))
        else:
            q, k, v = (zeros(s) for s in shapes[:3])
            mask = zeros(shapes[3]) if len(shapes) > 3 and isinstance(shapes[3], tuple) else None
            causal = bool(node.attrs.get("is_causal"))
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    return int(counter.get_total_flops())


def refresh_op_flops(state: PruneState, per_module: dict[str, int]) -> None:
    """Set the FLOPs of ``nn.MultiheadAttention`` attention from a count of the gated model.

    Its forward is one call: the attention's share is the module's count (as it runs once
    gated, with the arguments the model passes) less its two projections.
    """
    for spec in state.modules.values():
        path = spec.attrs.get("mha") if spec.role == "op" else None
        if path is None:
            continue
        projections = sum(
            state.modules[p].flops
            for p in (path, spec.attrs.get("out_proj", f"{path}.out_proj"))
            if p in state.modules
        )
        spec.flops = float(per_module.get(path, 0)) - projections


def _op_spec(m: ModuleChannels, refs: list[UnitRef], model: nn.Module, graph: Graph) -> ModuleSpec:
    node = next(n for n in graph.nodes if n.name == m.attrs["node"])
    flops = float(op_flops(graph, node, model))
    return ModuleSpec(m.path, "op", m.type_name, None, refs, flops, 0, 0, False, dict(m.attrs))


# ------------------------------------------------------------------------------- heads
def _heads_spec(
    m: ModuleChannels, refs: list[UnitRef], model: nn.Module, graph: Graph
) -> ModuleSpec:
    return ModuleSpec(m.path, "heads", m.type_name, None, refs, 0.0, 0, 0, False, dict(m.attrs))


def _collapse_heads(
    model: nn.Module, spec: ModuleSpec, kept: torch.Tensor
) -> tuple[str, dict[str, Any]]:
    a = spec.attrs
    split = [int(a["size"]), int(a["rest"]), len(kept), int(a.get("width", 0))]
    return str(a["scope"]), {"heads": [split]}


def head_attributes(module: nn.Module, splits: list[list[int]]) -> dict[str, list[int]]:
    """The integer attributes of ``module`` to update after its heads were pruned.

    Args:
        module: the module whose forward splits its channels into heads.
        splits: ``[heads, rest, kept heads, width]`` of each split it makes (``rest``: the
            product of the other dimensions of the split, e.g. the head width; ``width``: 1
            for a reshape to a channel count the module reads, ``[C, 1, kept, 1]``).

    Returns:
        ``{name: [old, new]}``: attributes named like a head count whose value is a head
        count, and attributes (other than per-head sizes) equal to ``heads * rest``.

    Raises:
        CollapseError: when two splits of the module would need different head counts.
    """
    new_heads: dict[int, int] = {}
    widths: dict[int, int] = {}
    for heads, rest, kept, *flag in splits:
        if flag and flag[0]:  # a channel count, not heads
            widths[heads * rest] = kept * rest
            continue
        if new_heads.setdefault(heads, kept) != kept:
            raise CollapseError(
                f"{type(module).__name__} splits {heads} heads twice with different kept heads "
                f"({new_heads[heads]} and {kept}); it cannot be collapsed consistently."
            )
        widths[heads * rest] = kept * rest
    updates: dict[str, list[int]] = {}
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, bool) or not isinstance(value, int):
            continue
        if _HEADS.search(name) and not _PER_HEAD.search(name) and value in new_heads:
            new = new_heads[value]
        elif value in widths and not any(p.search(name) for p in (_PER_HEAD, _HEADS, _INPUT)):
            new = widths[value]
        else:
            continue
        if new != value:
            updates[name] = [value, new]
    return updates


def _finish_heads(model: nn.Module, path: str, entry: dict[str, Any]) -> None:
    splits = entry.pop("heads", None)
    if not splits:
        return
    module = model.get_submodule(path)
    updates = head_attributes(module, splits)
    for name, (_, new) in updates.items():
        setattr(module, name, new)
    if updates:
        entry.setdefault("attrs", {}).update(updates)
    if any(kept != heads for heads, _, kept, *_ in splits):
        form = to_compact_form(module)  # its code derives the head width from its input
        if form is not None:
            entry["form"] = form


def _apply_attrs(model: nn.Module, path: str, attrs: dict[str, list[Any]]) -> None:
    module = model.get_submodule(path)
    for name, (old, new) in attrs.items():
        value = getattr(module, name, None)
        plain = list(value) if isinstance(value, (tuple, list)) else value
        if plain != old:
            raise PlanMismatchError(
                f"The channel plan sets `{path}.{name}` from {old} to {new}, but the model has "
                f"{value!r}."
            )
        setattr(module, name, type(value)(new) if isinstance(value, (tuple, list)) else new)


SPEC_BUILDERS.update({"param": _param_spec, "op": _op_spec, "heads": _heads_spec})
COLLAPSERS.update({"param": _collapse_param, "heads": _collapse_heads, "op": lambda *a: None})
FINISHERS.extend([_finish_heads, _finish_params])
PLAN_KEYS.update({"params": _apply_params, "attrs": _apply_attrs})
