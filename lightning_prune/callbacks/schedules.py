"""Scalar schedules: pure functions of training progress, selected by name.

Every schedule maps ``progress`` in ``[0, 1]`` (clamped) to a value between ``start`` and
``end``: ``fn(progress, start, end) -> float``. They drive the gate temperature
(:class:`~lightning_prune.callbacks.TemperatureAnnealing`) and the ramp-in of penalty weights
(:class:`~lightning_prune.penalties.SparsityPenalty`).

=============== ==========================================================================
name            value at progress ``p``
=============== ==========================================================================
``constant``    ``start``
``linear``      ``start + (end - start) * p`` (DPP: tau 5 -> 0.5)
``cosine``      ``end + (start - end) * (1 + cos(pi * p)) / 2``
``exponential`` ``start * (end / start) ** p`` (Continuous Sparsification: beta 1 -> 200)
``cubic``       ``end + (start - end) * (1 - p) ** 3`` (cubic ramp, fast then flat; paper 1)
``cubic_in``    ``start + (end - start) * p ** 3`` (slow then fast)
``step``        ``start`` before ``p = 1``, ``end`` from then on (switch a term on)
=============== ==========================================================================

Example:
    >>> from lightning_prune.callbacks.schedules import SCHEDULES, get_schedule
    >>> get_schedule("exponential")(0.5, 1.0, 100.0)
    10.0
    >>> [round(get_schedule("cubic")(p, 5.0, 30.0), 3) for p in (0.0, 0.5, 1.0)]
    [5.0, 26.875, 30.0]
    >>> "cosine" in SCHEDULES
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable

from lightning_prune._registry import Registry

__all__ = [
    "SCHEDULES",
    "Schedule",
    "constant",
    "cosine",
    "cubic",
    "cubic_in",
    "exponential",
    "get_schedule",
    "linear",
    "progress_between",
    "register_schedule",
    "step",
]

#: ``fn(progress, start, end) -> value``.
Schedule = Callable[[float, float, float], float]

SCHEDULES: Registry[Schedule] = Registry("schedule")


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Decorator registering a schedule ``fn(progress, start, end) -> float`` under ``name``.

    Example:
        >>> @register_schedule("square_demo")
        ... def square_demo(progress: float, start: float, end: float) -> float:
        ...     return start + (end - start) * _clamp(progress) ** 2
        >>> get_schedule("square_demo")(0.5, 0.0, 4.0)
        1.0
    """
    return SCHEDULES.register(name)


def get_schedule(name: str) -> Schedule:
    """The schedule registered as ``name``.

    Raises:
        ValueError: for an unknown name; the message lists the registered schedules.

    Example:
        >>> get_schedule("linear")(0.25, 0.0, 8.0)
        2.0
    """
    if not isinstance(name, str) or name not in SCHEDULES:
        raise ValueError(
            f"Unknown schedule {name!r}. Choose one of: {', '.join(SCHEDULES.names())} "
            "(or register your own with lightning_prune.callbacks.schedules.register_schedule)."
        )
    return SCHEDULES.get(name)


def _clamp(progress: float) -> float:
    return min(max(float(progress), 0.0), 1.0)


def progress_between(position: float, begin: float, end: float) -> float:
    """Fraction of the way from ``begin`` to ``end`` at ``position``, clamped to ``[0, 1]``.

    ``begin == end`` gives a switch: 0 before ``begin``, 1 from ``begin`` on.

    Example:
        >>> progress_between(3, 2, 6), progress_between(10, 2, 6), progress_between(1, 2, 2)
        (0.25, 1.0, 0.0)
    """
    if end <= begin:
        return 1.0 if position >= begin else 0.0
    return _clamp((position - begin) / (end - begin))


@register_schedule("constant")
def constant(progress: float, start: float, end: float) -> float:
    """Always ``start``.

    Example:
        >>> constant(0.7, 5.0, 30.0)
        5.0
    """
    return float(start)


@register_schedule("linear")
def linear(progress: float, start: float, end: float) -> float:
    """Straight line from ``start`` to ``end``.

    Example:
        >>> linear(0.5, 5.0, 0.5)
        2.75
    """
    p = _clamp(progress)
    return float(start + (end - start) * p)


@register_schedule("cosine")
def cosine(progress: float, start: float, end: float) -> float:
    """Half cosine from ``start`` to ``end``.

    Example:
        >>> cosine(0.5, 0.0, 2.0)
        1.0
    """
    p = _clamp(progress)
    return float(end + (start - end) * (1.0 + math.cos(math.pi * p)) / 2.0)


@register_schedule("exponential")
def exponential(progress: float, start: float, end: float) -> float:
    """Geometric interpolation ``start * (end / start) ** p`` (both must be positive).

    Continuous Sparsification anneals ``beta_e = 200 ** (e / (E - 1))``: ``start=1, end=200``
    with ``p = e / (E - 1)``.

    Raises:
        ValueError: if ``start`` or ``end`` is not positive.

    Example:
        >>> exponential(1.0, 1.0, 200.0)
        200.0
    """
    if start <= 0 or end <= 0:
        raise ValueError(
            f"The exponential schedule needs positive start and end values, got {start} and {end}."
        )
    p = _clamp(progress)
    if p == 1.0:
        return float(end)
    return float(start * (end / start) ** p)


@register_schedule("cubic")
def cubic(progress: float, start: float, end: float) -> float:
    """Cubic ramp ``end + (start - end) * (1 - p) ** 3``: moves fast first, settles at ``end``.

    The polynomial ramp used for pruning schedules (Zhu and Gupta 2017) and, in paper 1, for
    the slope ``k`` (5 -> 30) and the ramp-in of the basis penalty.

    Example:
        >>> cubic(0.0, 5.0, 30.0), cubic(1.0, 5.0, 30.0)
        (5.0, 30.0)
    """
    p = _clamp(progress)
    return float(end + (start - end) * (1.0 - p) ** 3)


@register_schedule("cubic_in")
def cubic_in(progress: float, start: float, end: float) -> float:
    """Cubic ease-in ``start + (end - start) * p ** 3``: slow first, fast at the end.

    Example:
        >>> cubic_in(0.5, 0.0, 8.0)
        1.0
    """
    p = _clamp(progress)
    return float(start + (end - start) * p**3)


@register_schedule("step")
def step(progress: float, start: float, end: float) -> float:
    """``start`` until the end of the interval, then ``end``.

    Example:
        >>> step(0.99, 0.0, 1.0), step(1.0, 0.0, 1.0)
        (0.0, 1.0)
    """
    return float(end if progress >= 1.0 else start)
