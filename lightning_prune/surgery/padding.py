"""Zero channels that round a compact network's widths up to a multiple, for graph runtimes.

A pruned network keeps widths such as 37 or 51. Runtimes that block channels in eights or
sixteens (ONNX Runtime's NCHWc convolutions, oneDNN, TensorRT) take a slower path for them: at
75% of the FLOPs removed, an smp U-Net in ONNX Runtime ran at 0.65 of its FLOPs ratio with its
learned widths and at 0.90 with widths rounded to 8 (``benchmarks/results/engine_onnx_unet75``).
:func:`pad_channels` rounds every channel group of a network (found by the same graph analysis
that pruned it) up to a multiple with channels that are exactly zero where they are produced
and read with zero weights where they are consumed, so the padded network computes the same
function; it is checked on the example and a random batch before it is returned.

A group is padded only where every layer touching it is a convolution, linear layer, batch
norm or PReLU that sees the whole group in order; groups that meet a split, a reshape into
heads, a per-channel tensor or a normalisation over channels (GroupNorm, LayerNorm) keep their
width (:attr:`PaddingReport.skipped` says why).
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from lightning_prune.errors import NothingToPruneError, PruningError
from lightning_prune.graph.trace import ExampleInputs, as_input_tuple
from lightning_prune.surgery.collapsing import _compare
from lightning_prune.surgery.resize import get_slicer
from lightning_prune.surgery.state import (
    ModuleSpec,
    PruneState,
    UnitRef,
    require_state,
    strip_gates,
)

__all__ = ["PaddingReport", "pad_channels"]

#: Layers whose channels can grow by zero entries without changing what the others compute.
_PADDABLE_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.PReLU,
)
_LAYER_ROLES = ("conv", "norm", "grouped")


@dataclasses.dataclass(frozen=True)
class PaddingReport:
    """What :func:`pad_channels` did.

    Attributes:
        multiple: the width every padded group was rounded up to a multiple of.
        padded_groups: groups that grew.
        added_channels: zero channels added over all groups.
        layers: layers that changed shape.
        skipped: groups left at their width that were not a multiple, by name, with the reason.
        error: largest output difference to the unpadded network, relative to the output scale.
    """

    multiple: int
    padded_groups: int
    added_channels: int
    layers: int
    skipped: dict[str, str]
    error: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly ``dict`` of the fields."""
        return dataclasses.asdict(self)


def _runs(refs: list[UnitRef], group: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each maximal run of ``refs`` that belongs to ``group``."""
    runs: list[tuple[int, int]] = []
    for i, ref in enumerate(refs):
        if ref is None or ref[0] != group:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _refusal(
    spec: ModuleSpec, refs: list[UnitRef], group: int, width: int, model: nn.Module
) -> str:
    """Why ``group`` cannot grow in this module's channels (``""``: it can)."""
    if spec.role not in _LAYER_ROLES:
        return f"`{spec.path}` uses its channels as a {spec.role!r}"
    module = model.get_submodule(spec.path)
    if not isinstance(module, _PADDABLE_LAYERS):
        return f"`{spec.path}` is a {type(module).__name__}"
    runs = _runs(refs, group)
    count = sum(stop - start for start, stop in runs)
    if count > width and count % width == 0 and len(runs) == 1:
        return f"`{spec.path}` sees each of its {width} units as {count // width} channels"
    if len(runs) != 1 or count != width:
        return f"`{spec.path}` reads part of the group or reads it more than once"
    start = runs[0][0]
    if [r[1] for r in refs[start : start + width] if r is not None] != list(range(width)):
        return f"`{spec.path}` reads the group's channels out of order"
    return ""


def _references(spec: ModuleSpec) -> list[list[UnitRef]]:
    out = [spec.out_units]
    if spec.role != "norm" and spec.in_units:
        out.append(spec.in_units)
    return out


def _group_refusal(state: PruneState, model: nn.Module, group: int, users: list[ModuleSpec]) -> str:
    """Why ``group`` cannot grow anywhere in the network (``""``: it can)."""
    for call_specs in state.calls.values():
        for call in call_specs:
            if any(ref is not None and ref[0] == group for ref in call.units or ()):
                return f"a split or slice of its channels ({call.key[0]!r}) reads it"
    width = state.groups[group].num_units
    for spec in users:
        for refs in _references(spec):
            if any(r is not None and r[0] == group for r in refs):
                reason = _refusal(spec, refs, group, width, model)
                if reason:
                    return reason
    return ""


def _plan(
    state: PruneState, model: nn.Module, multiple: int, max_growth: float
) -> tuple[dict[int, int], dict[str, str]]:
    """Zero channels to add per group index, and the groups left as they are with the reason."""
    users: dict[int, list[ModuleSpec]] = defaultdict(list)
    for spec in state.modules.values():
        for used in {r[0] for refs in _references(spec) for r in refs if r is not None}:
            users[used].append(spec)
    pads: dict[int, int] = {}
    skipped: dict[str, str] = {}
    for index, group in enumerate(state.groups):
        width = group.num_units
        pad = -width % multiple
        if not pad:
            continue
        reason = _group_refusal(state, model, index, users[index])
        if not reason and pad > max_growth * width:
            reason = f"{width} channels would grow by {pad / width:.0%} (max_growth {max_growth:g})"
        if reason:
            skipped[group.name] = reason
        else:
            pads[index] = pad
    return pads, skipped


def _padded_index(
    refs: list[UnitRef] | None, pads: dict[int, int], widths: dict[int, int]
) -> torch.Tensor | None:
    """Positions of ``refs`` with ``-1`` (a zero channel) after each padded group's last unit."""
    if not refs or not any(r is not None and r[0] in pads for r in refs):
        return None
    index: list[int] = []
    for i, ref in enumerate(refs):
        index.append(i)
        if ref is not None and ref[0] in pads and ref[1] == widths[ref[0]] - 1:
            index.extend([-1] * pads[ref[0]])
    return torch.tensor(index, dtype=torch.long)


def pad_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    multiple: int = 8,
    max_growth: float = 0.25,
    rtol: float = 1e-4,
) -> tuple[nn.Module, PaddingReport]:
    """A copy of ``model`` whose channel groups are rounded up to ``multiple`` with zero channels.

    The copy computes the same function (checked on ``example_inputs`` and a random batch like
    it, in eval mode) and costs a little more FLOPs; graph runtimes run it faster when their
    convolutions block channels (see the module docstring). ``model`` is not modified.

    Args:
        model: a network without gates (a collapsed one, or any dense network).
        example_inputs: a batch shaped like the real input (a tensor or a tuple of tensors).
        multiple: round widths up to a multiple of this; 1 returns an unchanged copy.
        max_growth: leave a group at its width when rounding would add more than this
            fraction of its channels (a 9-channel group would cost 78% more to reach 16, which
            a blocked kernel does not win back; measured in benchmarks/bench_engine.py).
        rtol: tolerance of the check, relative to the largest output magnitude.

    Returns:
        ``(padded copy in eval mode, report)``.

    Raises:
        PruningError: if the graph analysis refuses the model, or the padded copy does not
            reproduce it (please report that one with the model).

    Example:
        >>> from lightning_prune.models import build_model
        >>> net = build_model("small_cnn", num_classes=3, width=14).eval()
        >>> padded, report = pad_channels(net, torch.randn(2, 3, 16, 16))
        >>> report.padded_groups, report.added_channels, report.error < 1e-4
        (3, 10, True)
        >>> thin = build_model("small_cnn", num_classes=3, width=12).eval()
        >>> pad_channels(thin, torch.randn(2, 3, 16, 16))[1].skipped  # 12 -> 16 costs too much
        {'stem_0': '12 channels would grow by 33% (max_growth 0.25)'}
    """
    from lightning_prune.surgery.augmentation import augment

    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}.")
    if max_growth < 0:
        raise ValueError(f"max_growth must be >= 0, got {max_growth}.")
    inputs = as_input_tuple(example_inputs)
    work = copy.deepcopy(model).eval()
    if multiple == 1:
        return work, PaddingReport(1, 0, 0, 0, {}, 0.0)
    gen = torch.Generator().manual_seed(0)
    batches = [
        inputs,
        tuple(
            torch.randn(t.shape, generator=gen).to(t) if t.is_floating_point() else t
            for t in inputs
        ),
    ]
    with torch.no_grad():
        reference = [work(*batch) for batch in batches]
    try:
        augment(work, inputs)
    except NothingToPruneError:  # no channel group left to grow: nothing to pad
        return copy.deepcopy(model).eval(), PaddingReport(multiple, 0, 0, 0, {}, 0.0)
    state = require_state(work, "pad channels")
    strip_gates(work)
    pads, skipped = _plan(state, work, multiple, max_growth)
    widths = {i: g.num_units for i, g in enumerate(state.groups)}
    changed = 0
    for path, spec in state.modules.items():
        out_idx = _padded_index(spec.out_units, pads, widths)
        in_idx = _padded_index(spec.in_units if spec.role != "norm" else None, pads, widths)
        if out_idx is None and in_idx is None:
            continue
        module = work.get_submodule(path)
        get_slicer(module)(module, in_idx, out_idx)
        changed += 1
    work.eval()
    with torch.no_grad():
        error = max(_compare(ref, work(*batch), rtol) for ref, batch in zip(reference, batches))
    if not error <= rtol:
        raise PruningError(
            f"Padding {type(model).__name__}'s channels to multiples of {multiple} changed its "
            f"outputs (max error {error:.3g} of the output scale, tolerance {rtol:g}); please "
            "report it with the model, and export without padding (pad_channels_to=1)."
        )
    report = PaddingReport(
        multiple=multiple,
        padded_groups=len(pads),
        added_channels=sum(pads.values()),
        layers=changed,
        skipped=skipped,
        error=error,
    )
    return work, report
