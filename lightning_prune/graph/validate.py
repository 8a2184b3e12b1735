"""Checks of a tracing call's arguments, made before any tracing work.

Each failure raises an error that names the problem and the fix: a root module without a
forward, ``exclude`` patterns that match no module, an example input of the wrong dtype, or
one the model cannot run on at all.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lightning_prune.errors import ArgumentError, ExampleInputError, PruningError
from lightning_prune.graph.exclude import matches

__all__ = ["check_exclude", "check_input_dtypes", "check_root", "check_runs"]


def check_root(model: nn.Module) -> None:
    """Refuse a root module that cannot be called (``nn.ModuleList``, ``nn.ModuleDict``)."""
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"model must be an nn.Module, got {type(model).__name__}.")
    if type(model).forward is nn.Module.forward:
        name = type(model).__name__
        raise PruningError(
            f"Cannot trace a {name} root: a {name} has no forward of its own, so there is no "
            "graph to analyse. Pass the module whose forward calls these layers (or wrap them "
            "in an nn.Sequential)."
        )


def check_exclude(model: nn.Module, exclude: str | Sequence[str]) -> tuple[str, ...]:
    """``exclude`` as a tuple of patterns, each checked to match at least one module path.

    A single string is one pattern.

    Raises:
        ArgumentError: for a pattern that is not a string or matches no module.
    """
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    paths = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ArgumentError(
                f"exclude must hold module path patterns (strings), got {pattern!r} of type "
                f"{type(pattern).__name__}."
            )
        if any(matches(path, (pattern,)) for path in paths):
            continue
        close = difflib.get_close_matches(pattern, paths, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        examples = " or ".join(repr(p) for p in paths[:2]) or "none: it has no submodules"
        raise ArgumentError(
            f"exclude pattern {pattern!r} matches no module of {type(model).__name__}.{hint} "
            "Patterns are module paths or fnmatch patterns (a path covers its submodules), "
            f"such as {examples}."
        )
    return patterns


def _dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _runs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> BaseException | None:
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as err:
        return err
    return None


def _dtype_error(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> ExampleInputError | None:
    """The error to raise when the model runs only once its inputs take its parameters' dtype."""
    dtype = _dtype(model)
    odd = [t.dtype for t in inputs if dtype is not None and not t.is_floating_point()]
    if dtype is None or not odd or _runs(model, tuple(t.to(dtype) for t in inputs)) is not None:
        return None
    return ExampleInputError(
        f"The example input has dtype {odd[0]} but the model's parameters are {dtype}, so the "
        f"model cannot run on it. Pass a floating-point batch of dtype {dtype}, e.g. "
        "`x.float()` (scaled as the model's training data was)."
    )


def check_input_dtypes(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Refuse integer example inputs a floating-point model cannot run on.

    Only inputs that are not floating point are checked (one forward pass, then one more
    with the inputs cast), so a model that takes integer inputs (token ids) is accepted.
    """
    if all(t.is_floating_point() for t in inputs) or _runs(model, inputs) is None:
        return
    err = _dtype_error(model, inputs)
    if err is not None:
        raise err


def check_runs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Raise :class:`ExampleInputError` naming the input when the model cannot run on it."""
    err = _runs(model, inputs)
    if err is None:
        return
    dtype_err = _dtype_error(model, inputs)
    if dtype_err is not None:
        raise dtype_err from err
    shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
    fix = (
        "Pass a batch shaped like the model's real input (for an image model: batch, "
        "channels, height, width)."
    )
    if isinstance(err, TypeError) and "positional argument" in str(err):
        fix = (
            "Its forward takes another number of inputs: give all of them, as a tuple "
            "(`self.example_input_array = (images, extra)`)."
        )
    raise ExampleInputError(
        f"The model cannot run on the example input of shape {shapes}: {_describe(err)}. {fix}"
    ) from err


def _describe(err: BaseException) -> str:
    """The error's type and message; where it was raised when it has no message."""
    text = str(err).strip()
    if text:
        return f"{type(err).__name__}: {text}"
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if f"{os.sep}torch{os.sep}" not in f.filename] or frames
    if not own:
        return type(err).__name__
    path = Path(own[-1].filename)
    return f"{type(err).__name__} raised at {path.parent.name}/{path.name}:{own[-1].lineno}"
