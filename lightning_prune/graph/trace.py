"""Capture a model's graph (torch.fx first, torch.export as fallback) and analyse its channels."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lightning_prune.errors import ExampleInputError, UntraceableModelError
from lightning_prune.graph.analysis import ChannelAnalysis, analyse
from lightning_prune.graph.frontend import CaptureError
from lightning_prune.graph.fx_backend import trace_fx
from lightning_prune.graph.ir import Graph
from lightning_prune.graph.validate import (
    check_exclude,
    check_input_dtypes,
    check_root,
    check_runs,
)

ExampleInputs = torch.Tensor | Sequence[torch.Tensor]


def as_input_tuple(example_inputs: ExampleInputs | None) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of tensors, with a clear error otherwise."""
    if example_inputs is None:
        raise ExampleInputError(
            "No example input was given. Pass a batch shaped like the model's real input, "
            "e.g. torch.randn(1, 3, 224, 224) (Lightning: set `self.example_input_array`)."
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ExampleInputError(
        "example_inputs must be a Tensor or a tuple of Tensors, got "
        f"{type(example_inputs).__name__}."
    )


@dataclass
class ChannelTrace:
    """What :func:`trace_channels` returns: the captured graph and its channel analysis."""

    graph: Graph
    analysis: ChannelAnalysis

    @property
    def groups(self) -> list[list[int]]:
        """Unit ids of each gateable channel group."""
        return self.analysis.groups


def _trace_export(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...]
) -> Graph:
    from lightning_prune.graph.export_backend import trace_export

    return trace_export(model, inputs, exclude)


_STAGES = {"torch.fx": "torch.fx", "ShapeProp": "torch.fx (shape propagation)"}


def capture(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], exclude: tuple[str, ...] = ()
) -> Graph:
    """Capture the graph with torch.fx, falling back to torch.export when fx cannot capture it.

    Only a capture failure (:class:`~.frontend.CaptureError`: the tracer meeting the model's
    Python) falls back; an error while reading the captured graph is a bug and propagates.

    Raises:
        ExampleInputError: when the model cannot run on ``inputs`` at all.
        UntraceableModelError: when both front-ends fail to capture it; names both failures.
    """
    try:
        return trace_fx(model, inputs, exclude)
    except CaptureError as fx_err:
        if fx_err.stage == "ShapeProp":
            check_runs(model, inputs)  # the traced graph failed to run: is it the input?
        try:
            return _trace_export(model, inputs, exclude)
        except CaptureError as ex_err:
            check_runs(model, inputs)  # a wrong example input is the likelier cause
            raise UntraceableModelError(
                f"lightning_prune could not capture {type(model).__name__}'s graph.\n"
                f"  {_describe(fx_err)}\n"
                f"  {_describe(ex_err)}\n"
                "Make the failing submodule traceable, or wrap the part that cannot be traced "
                "in its own module and pass its path in `exclude=` so it is kept as it is."
            ) from ex_err


def _describe(err: CaptureError) -> str:
    text = str(err.cause).strip().splitlines()
    first = text[0] if text else ""
    return f"{_STAGES.get(err.stage, err.stage)}: {type(err.cause).__name__}: {first}"


def trace_channels(
    model: nn.Module,
    example_inputs: ExampleInputs,
    exclude: str | Sequence[str] = (),
    *,
    embedding: str = "pin",
    pins: Mapping[str, str] | None = None,
) -> ChannelTrace:
    """Find the channel groups of ``model``: producer channels that must be pruned together.

    The arguments are checked before any tracing work. The model is traced in eval mode (its
    mode is restored afterwards) and is not modified.

    Args:
        model: any ``nn.Module`` with a forward.
        example_inputs: a Tensor or tuple of Tensors shaped like a real batch.
        exclude: module path patterns whose channels are never pruned; each must match a
            module.
        embedding: channels normalised by a LayerNorm: ``"pin"`` or ``"renormalize"`` (see
            :func:`~lightning_prune.graph.analysis.analyse`).
        pins: producers whose output channels are kept, with the reason.

    Returns:
        A :class:`ChannelTrace` with the graph and the groups.

    Raises:
        ArgumentError: for an ``exclude`` pattern that matches no module.
        ExampleInputError: for a missing example input or one the model cannot run on.
        UntraceableModelError: when neither torch.fx nor torch.export captures the model.

    Example:
        >>> import torchvision
        >>> t = trace_channels(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> len(t.groups)
        12
    """
    check_root(model)
    patterns = check_exclude(model, exclude)
    inputs = as_input_tuple(example_inputs)
    was_training = model.training
    try:
        model.eval()
        check_input_dtypes(model, inputs)
        graph = capture(model, inputs, patterns)
    finally:
        model.train(was_training)
    analysis = analyse(graph, patterns, embedding, pins)
    warn_ungated(analysis)
    return ChannelTrace(graph, analysis)


def warn_ungated(analysis: ChannelAnalysis, reasons: set[str] | None = None) -> None:
    """Warn about the groups left ungated (only those pinned for ``reasons``, if given)."""
    for reason, producers in sorted(analysis.ungated.items()):
        if reasons is not None and reason not in reasons:
            continue
        names = ", ".join(f"`{p}`" for p in sorted(producers)[:4])
        more = f" and {len(producers) - 4} more" if len(producers) > 4 else ""
        warnings.warn(
            f"lightning_prune: channels produced by {names}{more} reach {reason}, which the "
            "engine cannot prune through; those channel groups are left ungated (unchanged). "
            "Pass their paths in `exclude=` to silence this warning.",
            stacklevel=3,
        )
