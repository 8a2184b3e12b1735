"""The per-epoch history of a run, and which of its keys is the task metric.

What :class:`~lightning_prune.reporting.PruningReport` records after every validation and
training epoch, and plots and writes to ``summary.json`` when ``fit`` ends.

Example:
    >>> history = {}
    >>> record_epoch(history, epoch=0, step=10, metrics={"val_acc": 0.5, "lr": 0.1})
    >>> history
    {0: {'epoch': 0, 'step': 10, 'val_acc': 0.5}}
    >>> metric_name(None, {}, history), plotted_metric("val/acc", list(history.values()))
    ('val_acc', 'val_acc')
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["DEFAULT_METRICS", "HISTORY_KEYS", "metric_name", "plotted_metric", "record_epoch"]

#: Metric names tried, in order, when ``metric`` is not given.
DEFAULT_METRICS = ("val/acc", "val/miou", "val_acc", "val/accuracy", "val/top1")
#: ``callback_metrics`` keys recorded in the per-epoch history besides ``val*`` and ``train*``.
HISTORY_KEYS = (
    "prune/temperature",
    "prune/penalty/total",
    "prune/penalty/multiplier",
    "prune/penalty/measured_ratio",
    "prune/kept_soft",
    "prune/kept_hard",
    "prune/relaxed_flops_ratio",
)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def record_epoch(
    history: dict[int, dict[str, Any]],
    epoch: int,
    step: int,
    metrics: Mapping[str, Any],
    prefixes: tuple[str, ...] = ("val", "train"),
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Add one epoch's numbers to ``history[epoch]``.

    Kept: the finite scalars of ``metrics`` whose key starts with one of ``prefixes`` or is one
    of :data:`HISTORY_KEYS`, and ``extra``.
    """
    entry = history.setdefault(int(epoch), {"epoch": int(epoch)})
    entry["step"] = int(step)
    for key, value in metrics.items():
        if key.startswith(prefixes) or key in HISTORY_KEYS:
            number = _scalar(value)
            if number is not None and math.isfinite(number):
                entry[key] = number
    entry.update(extra or {})


def metric_name(
    metric: str | None, evaluated: Mapping[str, float], history: Mapping[int, Mapping[str, Any]]
) -> str | None:
    """``metric``, else the first of :data:`DEFAULT_METRICS` evaluated or logged."""
    if metric:
        return metric
    seen = set(evaluated) | {k for entry in history.values() for k in entry}
    return next((name for name in DEFAULT_METRICS if name in seen), None)


def plotted_metric(metric: str | None, history: list[dict[str, Any]]) -> str | None:
    """The logged key to plot: ``metric``, else the module's own (e.g. ``val_acc``)."""
    logged = {k for entry in history for k in entry}
    if metric is None or metric in logged:
        return metric
    return next((name for name in DEFAULT_METRICS if name in logged), metric)
