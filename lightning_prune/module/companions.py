"""The Trainer's other callbacks whose state describes the network, across a structure change.

A pruning run changes the network twice: the structure phase trades capacity for FLOPs (the
monitored metric is expected to get worse), then the structure is fixed and usually collapsed
(parameter shapes change). Callbacks a project already has keep state that spans both:

* ``EarlyStopping`` would stop the run during the structure phase, before the final structure
  was trained: it is held (its patience restarts at every step) until the structure is fixed,
  then its tracking restarts on the final structure.
* ``ModelCheckpoint(monitor=...)`` would call a checkpoint of the unpruned, gated network
  "best": its tracking restarts when the structure is fixed, so ``ckpt_path="best"`` means the
  best pruned network. Files written before stay on disk (they are no longer tracked, so never
  deleted).
* ``WeightAveraging`` (``EMAWeightAveraging``) and ``StochasticWeightAveraging`` hold a copy of
  the network: it is rebuilt from the network whenever its parameters change shape (gates
  inserted after the copy was made, a collapse, a resumed run's structure restored before the
  callbacks load their state), and averaging restarts there.

Each kind of callback is handled by one entry of :data:`RESTARTS` / :data:`RESEEDS`.

Example:
    >>> import types
    >>> from lightning.pytorch.callbacks import EarlyStopping
    >>> stop = EarlyStopping(monitor="val/acc", mode="max", patience=1)
    >>> stop.wait_count = 3
    >>> restart_tracking(types.SimpleNamespace(callbacks=[stop]))
    ['EarlyStopping(monitor=val/acc)']
    >>> stop.wait_count, float(stop.best_score)
    (0, -inf)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    StochasticWeightAveraging,
    WeightAveraging,
)
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = [
    "RESEEDS",
    "RESTARTS",
    "check_averaging_start",
    "hold_early_stopping",
    "reseed_averaging",
    "restart_tracking",
]


def _callbacks(trainer: Any, kind: type[Callback]) -> Iterator[Any]:
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, kind):
            yield callback


def _inf(low: bool) -> torch.Tensor:
    return torch.tensor(-math.inf if low else math.inf)


# ------------------------------------------------------------------------------ tracking
def _restart_early_stopping(callback: EarlyStopping) -> bool:
    callback.wait_count = 0
    callback.best_score = _inf(low=callback.monitor_op is not torch.lt)
    return True


def _restart_checkpoint(callback: ModelCheckpoint) -> bool:
    if callback.monitor is None:  # every-N or last-only checkpoints track no score
        return False
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.best_model_score = None
    callback.best_model_path = ""
    callback.kth_value = _inf(low=callback.mode == "max")
    return True


#: Per callback kind: how its metric tracking restarts (returns whether it tracked a metric).
RESTARTS: dict[type[Callback], Callable[[Any], bool]] = {
    EarlyStopping: _restart_early_stopping,
    ModelCheckpoint: _restart_checkpoint,
}


def hold_early_stopping(trainer: Any) -> None:
    """Restart every ``EarlyStopping``'s patience: called each step of the structure phase."""
    for callback in _callbacks(trainer, EarlyStopping):
        _restart_early_stopping(callback)


def restart_tracking(trainer: Any) -> list[str]:
    """Restart the metric tracking of the Trainer's monitoring callbacks.

    Returns:
        ``"Kind(monitor=key)"`` for each callback restarted (for the log line).
    """
    restarted = []
    for kind, restart in RESTARTS.items():
        for callback in _callbacks(trainer, kind):
            if restart(callback):
                restarted.append(f"{type(callback).__name__}(monitor={callback.monitor})")
    return restarted


# ----------------------------------------------------------------------------- averaging
def _shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in module.parameters()]


def _reseed_weight_averaging(callback: WeightAveraging, module: nn.Module) -> bool:
    averaged = callback._average_model
    if averaged is None or _shapes(averaged.module) == _shapes(module):
        return False
    device = callback._device or next(module.parameters()).device
    callback._average_model = AveragedModel(
        model=module, device=device, use_buffers=callback._use_buffers, **callback._kwargs
    )
    return True


def _reseed_swa(callback: StochasticWeightAveraging, module: nn.Module) -> bool:
    averaged = callback._average_model
    if averaged is None or _shapes(averaged) == _shapes(module):
        return False
    callback._average_model = copy.deepcopy(module)  # type: ignore[assignment]
    if callback.n_averaged is not None:
        callback.n_averaged.zero_()
    return True


#: Per callback kind: how its copy of the network is rebuilt (returns whether it was stale).
RESEEDS: dict[type[Callback], Callable[[Any, nn.Module], bool]] = {
    WeightAveraging: _reseed_weight_averaging,
    StochasticWeightAveraging: _reseed_swa,
}


def reseed_averaging(trainer: Any, module: nn.Module) -> list[str]:
    """Rebuild the averaged copies whose parameters no longer match ``module``'s shapes.

    Returns:
        The class names of the callbacks whose averaging restarted.
    """
    reseeded = []
    for kind, reseed in RESEEDS.items():
        for callback in _callbacks(trainer, kind):
            if reseed(callback, module):
                reseeded.append(type(callback).__name__)
    return reseeded


SWA_TOO_EARLY = (
    "StochasticWeightAveraging starts averaging at epoch {swa} (swa_epoch_start), but the "
    "network is collapsed when its structure is fixed at step {step} (during epoch {epoch}, "
    "counted from 0): the "
    "averaged weights would mix two structures. Set swa_epoch_start to at least {minimum} "
    "(or PruningSchedule(structure=...) shorter)."
)


def check_averaging_start(trainer: Any, structure_steps: int, total_steps: int) -> None:
    """Refuse a ``StochasticWeightAveraging`` that starts before a mid-fit collapse.

    (It swaps the LR scheduler of the optimizer that the collapse replaces.)

    Raises:
        MisconfigurationException: naming the epoch to start from.
    """
    max_epochs = getattr(trainer, "max_epochs", None)
    if not max_epochs or max_epochs < 1 or total_steps < 1:
        return
    per_epoch = total_steps / max_epochs
    # the 0-based epoch whose last steps include the collapse
    epoch = max(math.ceil(structure_steps / per_epoch) - 1, 0)
    for callback in _callbacks(trainer, StochasticWeightAveraging):
        start = callback._swa_epoch_start
        if isinstance(start, float):
            start = int(max_epochs * start)
        if max(int(start) - 1, 0) <= epoch:
            raise MisconfigurationException(
                SWA_TOO_EARLY.format(
                    swa=callback._swa_epoch_start,
                    step=structure_steps,
                    epoch=epoch,
                    minimum=epoch + 2,
                )
            )
