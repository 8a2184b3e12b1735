"""Network augmentation: one gate per channel group, applied after each producer's norm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from lightning_prune.counting import count_flops, count_params, module_flops
from lightning_prune.errors import ArgumentError, NothingToPruneError, PruningError
from lightning_prune.gates.base import ChannelGate
from lightning_prune.gates.registry import get_gate_class
from lightning_prune.graph.analysis import EMBEDDING_MODES, ChannelAnalysis, ModuleChannels, analyse
from lightning_prune.graph.connectivity import critical_groups
from lightning_prune.graph.ir import Graph
from lightning_prune.graph.trace import ExampleInputs, as_input_tuple, trace_channels, warn_ungated
from lightning_prune.graph.validate import check_exclude
from lightning_prune.surgery.arguments import check_augment_root, check_gate_kwargs, make_gates
from lightning_prune.surgery.attention import refresh_op_flops
from lightning_prune.surgery.gating import (
    ResetSamples,
    Segment,
    attach_site,
    prepare_root,
    switched_classes,
)
from lightning_prune.surgery.norm import AXIS_ATTR
from lightning_prune.surgery.params import get_tensor
from lightning_prune.surgery.roles import SPEC_BUILDERS, projection
from lightning_prune.surgery.state import (
    GATES_ATTR,
    STATE_ATTR,
    CallSpec,
    GateGroup,
    GroupSpec,
    ModuleSpec,
    PruneState,
    UnitRef,
    gate_modules,
    get_state,
    strip_gates,
)
from lightning_prune.surgery.trial import failing_head_groups


def _group_names(analysis: ChannelAnalysis) -> list[str]:
    names: list[str] = []
    for producers in analysis.group_producers:
        base = producers[0].replace(".", "_") or "root"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def _unit_positions(analysis: ChannelAnalysis) -> dict[int, tuple[int, int]]:
    return {u: (gi, p) for gi, units in enumerate(analysis.groups) for p, u in enumerate(units)}


def _module_flops(graph: Graph, model: nn.Module) -> dict[str, int]:
    """FLOPs of every conv / linear call, in ``torch.utils.flop_counter``'s convention."""
    shapes = {n.name: n.shape for n in graph.nodes}
    flops: dict[str, int] = {}
    for node in graph.nodes:
        if node.kind not in ("conv", "linear") or node.module is None:
            continue
        x = shapes.get(node.inputs[0] or "")
        y = node.shape
        if not isinstance(x, tuple) or not isinstance(y, tuple):
            continue
        w = node.attrs.get("weight_shape") or tuple(
            cast(torch.Tensor, model.get_submodule(node.module).weight).shape
        )
        if node.kind == "linear":
            f = 2 * math.prod(x[:-1]) * w[0] * w[1]
        else:
            spatial = x[2:] if node.attrs.get("transposed") else y[2:]
            # a conditional conv also mixes its experts' kernels, per sample
            f = 2 * x[0] * math.prod(w) * (math.prod(spatial) + node.attrs.get("experts", 0))
        flops[node.module] = flops.get(node.module, 0) + f
    return flops


def _segments(
    refs: list[UnitRef], gates: list[ChannelGate], groups: list[GroupSpec]
) -> list[Segment]:
    runs: list[tuple[int | None, list[int]]] = []
    for ref in refs:
        g = None if ref is None else ref[0]
        if runs and runs[-1][0] == g:
            runs[-1][1].append(-1 if ref is None else ref[1])
        else:
            runs.append((g, [-1 if ref is None else ref[1]]))
    segs: list[Segment] = []
    for g, pos in runs:
        if g is None:
            segs.append((None, None, len(pos)))
        else:
            identity = pos == list(range(groups[g].num_units))
            segs.append((gates[g], None if identity else pos, len(pos)))
    return segs


def _params(module: nn.Module) -> tuple[int, int]:
    w, b = projection(module)  # a packed input projection for attention
    wn = w.numel() if isinstance(w, torch.Tensor) else 0
    bn = b.numel() if isinstance(b, torch.Tensor) else 0
    return wn, bn


def _spec(
    m: ModuleChannels,
    analysis: ChannelAnalysis,
    pos: dict[int, tuple[int, int]],
    model: nn.Module,
    flops: int,
    graph: Graph,
) -> ModuleSpec:
    def refs(elems: list[int] | None) -> list[UnitRef]:
        return [pos.get(analysis.unit(e)) for e in elems or []]

    if m.role == "tensor":  # a per-channel tensor: values scaled by its width
        numel = get_tensor(model, m.path).numel()
        return ModuleSpec(m.path, "tensor", "Parameter", None, refs(m.inputs), 0.0, 0, numel)
    builder = SPEC_BUILDERS.get(m.role)
    if builder is not None:  # not a layer: a parameter, an operation, a head split
        return builder(m, refs(m.outputs), model, graph)
    module = model.get_submodule(m.path)
    wn, bn = _params(module)
    if m.role in ("norm", "channels"):
        return ModuleSpec(
            m.path,
            m.role,
            type(module).__name__,
            None,
            refs(m.inputs),
            0.0,
            0,
            wn + bn,
            attrs=dict(m.attrs),
        )
    if m.role == "source":  # a constant layer: its values are its only parameters
        values = sum(p.numel() for p in module.parameters(recurse=False))
        return ModuleSpec(
            m.path, "source", type(module).__name__, None, refs(m.outputs), 0.0, 0, values
        )
    ins = refs(m.inputs)
    outs = refs(m.outputs)
    if m.role == "grouped":
        return ModuleSpec(m.path, "grouped", type(module).__name__, ins, outs, flops, 0, wn + bn)
    return ModuleSpec(
        m.path, "conv", type(module).__name__, ins, outs, flops, wn, bn, attrs=dict(m.attrs)
    )


def _build_state(
    model: nn.Module,
    graph: Graph,
    analysis: ChannelAnalysis,
    inputs: tuple[torch.Tensor, ...],
    gate_type: str,
) -> PruneState:
    total = graph.total_flops if graph.total_flops is not None else count_flops(model, inputs)
    per_module = _module_flops(graph, model)
    pos = _unit_positions(analysis)
    names = _group_names(analysis)
    critical = critical_groups(graph, analysis.group_producers)
    groups = [
        GroupSpec(n, len(units), list(prods), critical=c)
        for n, units, prods, c in zip(names, analysis.groups, analysis.group_producers, critical)
    ]
    specs: dict[str, ModuleSpec] = {}
    for m in analysis.modules.values():
        flops = per_module.get(m.path, int(m.attrs.get("flops", 0)))
        spec = _spec(m, analysis, pos, model, flops, graph)
        touched = {r[0] for r in (spec.in_units or []) + spec.out_units if r is not None}
        if not touched:
            continue
        gated_out = any(r is not None for r in spec.out_units)
        biased = spec.role == "grouped" and _params(model.get_submodule(m.path))[1] > 0
        spec.site = gated_out and (
            spec.role == "norm"
            or (spec.role in ("conv", "source") and not m.feeds_norm_only)
            or (biased and not m.feeds_norm_only)  # a biased depthwise conv without a norm
        )
        specs[m.path] = spec
        for gi in touched:
            groups[gi].modules.append(m.path)
    calls: dict[str, list[CallSpec]] = {}
    for call in analysis.calls:
        units = None if call.elems is None else [pos.get(analysis.unit(e)) for e in call.elems]
        if units is not None and all(u is None for u in units):
            units = None  # none of its channels is ever removed
        calls.setdefault(call.scope, []).append(CallSpec(call.key, units, list(call.spans)))
    return PruneState(
        gate_type=gate_type,
        groups=groups,
        modules=specs,
        example_inputs=tuple(t.detach().cpu().clone() for t in inputs),
        dense_flops=float(total),
        dense_params=float(count_params(model)),
        backend=graph.backend,
        calls=calls,
    )


def _nothing_to_prune(model: nn.Module, analysis: ChannelAnalysis) -> str:
    """Why no group can be gated: the operations that stopped them, else the general rule."""
    name = type(model).__name__
    reasons = sorted(analysis.ungated, key=lambda r: (-len(analysis.ungated[r]), r))
    if not reasons:
        return (
            f"{name} has no prunable channel group: lightning_prune prunes the output channels "
            "of Conv/Linear layers that do not feed the model's output directly. Check "
            "`exclude=` and that the model has such layers."
        )
    more = f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else ""
    return (
        f"{name} has no prunable channel group: every group reaches an operation the engine "
        f"cannot prune through, such as {' and '.join(reasons[:2])}{more}. If such an "
        "operation acts on each channel separately, register a channel rule for it "
        "(lightning_prune.graph.ops.register_op)."
    )


def augment(
    model: nn.Module,
    example_inputs: ExampleInputs,
    gate: str | type[ChannelGate] = "sigmoid",
    exclude: str | Sequence[str] = (),
    gate_kwargs: dict[str, Any] | None = None,
    embedding: str = "pin",
) -> list[ChannelGate]:
    """Insert one gate per channel group of ``model`` (in place).

    Each gate multiplies its group's channels after every producer's normalisation (before
    the nonlinearity). Gates start open, so a trained model's eval outputs are unchanged. The
    groups feeding the model's outputs are never gated. Calling it again on an augmented model
    returns the existing gates.

    Args:
        model: any CNN-like ``nn.Module``.
        example_inputs: a Tensor or tuple of Tensors shaped like a real batch.
        gate: gate family by registered name (``"sigmoid"``, ``"hard_concrete"``,
            ``"gumbel_topk"``) or a :class:`~lightning_prune.gates.ChannelGate` subclass.
        exclude: module path patterns (``fnmatch``; a prefix covers its submodules) whose
            channels are never pruned; each must match a module.
        gate_kwargs: keyword arguments for the gate class (e.g. ``temperature``).
        embedding: what to do with channels a LayerNorm normalises (a transformer's
            embedding width): ``"pin"`` keeps them; ``"renormalize"`` prunes them, each
            LayerNorm taking its statistics over the kept channels only (in the gated model
            too, so that the compact model computes exactly what the gated one does; a model
            trained densely sees a changed normalisation once channels close).

    Returns:
        The gates, one per group (also reachable as ``model.lp_gates``).

    Raises:
        UnknownNameError: (a ``KeyError``) for an unregistered gate name.
        ArgumentError: for ``gate_kwargs`` the gate class does not accept, or an ``exclude``
            pattern that matches no module (checked before any tracing).
        NothingToPruneError: when no channel group can be gated.
        ExampleInputError: when the model cannot run on ``example_inputs``.
        UntraceableModelError: when neither torch.fx nor torch.export captures the model.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> gates = augment(net, torch.randn(1, 3, 64, 64))
        >>> len(gates), gates[0].num_channels
        (12, 64)
    """
    gate_cls = get_gate_class(gate)
    check_gate_kwargs(gate_cls, gate_kwargs)
    existing = get_state(model)
    if existing is not None:
        if existing.gate_type != gate_cls.__name__:
            raise PruningError(
                f"{type(model).__name__} is already augmented with {existing.gate_type} gates; "
                f"cannot add {gate_cls.__name__} gates. Collapse it or build a fresh model."
            )
        return gate_modules(model)
    check_augment_root(model)
    if embedding not in EMBEDDING_MODES:
        raise ArgumentError(
            f"embedding must be one of {EMBEDDING_MODES}, got {embedding!r}: 'pin' keeps the "
            "channels LayerNorms normalise, 'renormalize' prunes them (LayerNorm statistics "
            "over the kept channels)."
        )
    inputs = as_input_tuple(example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = tuple(t.to(device) for t in inputs)
    traced = trace_channels(model, inputs, exclude, embedding=embedding)
    patterns = check_exclude(model, exclude)
    analysis = traced.analysis
    pins: dict[str, str] = {}
    for _ in range(3):
        gates = _attach(model, inputs, gate_cls, traced.graph, analysis, gate_kwargs, embedding)
        failing = failing_head_groups(model)
        if not failing:
            return gates
        state = get_state(model)
        assert state is not None
        new = {p: reason for g, reason in failing.items() for p in state.groups[g].producers}
        pins.update(new)
        strip_gates(model)
        analysis = analyse(traced.graph, patterns, embedding, pins)
        warn_ungated(analysis, set(new.values()))
    raise PruningError(  # pragma: no cover - pinned groups cannot fail again
        f"lightning_prune could not find collapsible head groups in {type(model).__name__}."
    )


def _attach(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    gate_cls: type[ChannelGate],
    graph: Graph,
    analysis: ChannelAnalysis,
    gate_kwargs: dict[str, Any] | None,
    embedding: str,
) -> list[ChannelGate]:
    """Insert the gates of an analysed ``model``."""
    device = inputs[0].device if inputs else torch.device("cpu")
    if not analysis.groups:
        raise NothingToPruneError(_nothing_to_prune(model, analysis))
    state = _build_state(model, graph, analysis, inputs, gate_cls.__name__)
    state.embedding = embedding
    gates = make_gates(gate_cls, [g.num_units for g in state.groups], gate_kwargs)
    for g, spec in zip(gates, state.groups):
        g.to(device).train(model.training)
        g.min_kept = int(spec.critical)
    prepare_root(model)
    model.add_module(GATES_ATTR, nn.ModuleDict({g.name: gt for g, gt in zip(state.groups, gates)}))
    for mod_spec in state.modules.values():
        if mod_spec.site:
            site = model.get_submodule(mod_spec.path)
            if "layer_norm" in mod_spec.attrs:  # the dimension it normalises (surgery.norm)
                site.__dict__[AXIS_ATTR] = mod_spec.attrs["layer_norm"]
            attach_site(site, _segments(mod_spec.out_units, gates, state.groups))
    if gate_cls.stochastic:
        model.register_forward_pre_hook(ResetSamples(gates))
    if switched_classes(model):  # a layer's forward changed (e.g. attention): count it again
        total, per_module = module_flops(model, inputs)
        state.dense_flops = float(total)
        refresh_op_flops(state, per_module)
    model.__dict__[STATE_ATTR] = state
    return gates


def is_augmented(model: nn.Module) -> bool:
    """Whether ``model`` carries lightning_prune gates."""
    return get_state(model) is not None


def get_gates(model: nn.Module) -> list[ChannelGate]:
    """The model's gates in group order (``[]`` when it was never augmented)."""
    return gate_modules(model)


def get_groups(model: nn.Module) -> list[GateGroup]:
    """Public description of every gated group (name, gate, width, modules)."""
    state = get_state(model)
    if state is None:
        return []
    gates = gate_modules(model)
    return [
        GateGroup(g.name, gate, g.num_units, list(g.producers), list(g.modules), g.critical)
        for g, gate in zip(state.groups, gates)
    ]
