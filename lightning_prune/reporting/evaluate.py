"""Evaluate a (collapsed) network on a validation loader with the module's own metrics."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["evaluate_module"]


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "out" in output:
        return output["out"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"Cannot find the logits in a network output of type {type(output).__name__}.")


def _split(batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        x, y = batch[0], batch[1]
    elif isinstance(batch, Mapping):
        x = next(
            (batch[k] for k in ("image", "images", "input", "inputs", "x") if k in batch), None
        )
        y = next(
            (batch[k] for k in ("target", "targets", "label", "labels", "mask", "y") if k in batch),
            None,
        )
    else:
        return None
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    return None


@torch.no_grad()
def evaluate_module(
    module: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    prefix: str = "val/",
) -> dict[str, float]:
    """Run ``module`` in eval mode over ``loader`` and compute its validation metrics.

    The metrics are a fresh copy of ``module.val_metrics`` (a torchmetrics ``Metric`` or
    ``MetricCollection``, as the ready task modules have), fed with the logits (class dimension
    1; segmentation logits smaller than the target are upsampled bilinearly). Without
    ``val_metrics``, top-1 accuracy is computed for ``[N, C]`` logits and nothing otherwise.
    The module's device and train/eval mode are restored afterwards.

    Args:
        module: the network or LightningModule (``module(x)`` gives logits).
        loader: batches ``(inputs, targets, ...)`` or dicts with image / target keys.
        device: where to run (default: where the module is).
        max_batches: stop after this many batches (``None``: all).
        prefix: prefix of the keys when the metric has no prefix of its own.

    Returns:
        ``{name: value}``, e.g. ``{"val/acc": 0.97}``; empty when nothing could be evaluated.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> list(evaluate_module(net, batches))
        ['val/acc']
    """
    params = list(module.parameters())
    original = params[0].device if params else torch.device("cpu")
    target_device = torch.device(device) if device is not None else original
    template = getattr(module, "val_metrics", None)
    metrics: Any = None
    if template is not None and hasattr(template, "update") and hasattr(template, "compute"):
        metrics = copy.deepcopy(template)
        metrics.reset()
        metrics.to(target_device)
    correct = total = 0
    was_training = module.training
    seen = 0
    try:
        module.to(target_device)
        module.eval()
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            parts = _split(batch)
            if parts is None:
                return {}
            x, y = parts[0].to(target_device), parts[1].to(target_device)
            logits = _logits(module(x))
            if y.dim() >= 2 and logits.dim() == y.dim() + 1 and logits.shape[-2:] != y.shape[-2:]:
                logits = F.interpolate(
                    logits, size=y.shape[-2:], mode="bilinear", align_corners=False
                )
            if metrics is not None:
                metrics.update(logits, y.long() if y.dim() >= 2 else y)
            elif logits.dim() == 2 and y.dim() == 1:
                correct += int((logits.argmax(1) == y).sum())
                total += int(y.numel())
            seen += 1
    finally:
        module.train(was_training)
        module.to(original)
    if not seen:
        return {}
    if metrics is not None:
        values = metrics.compute()
        if isinstance(values, Mapping):
            return {str(k): float(v) for k, v in values.items()}
        return {f"{prefix}{type(metrics).__name__}": float(values)}
    return {f"{prefix}acc": correct / total} if total else {}
