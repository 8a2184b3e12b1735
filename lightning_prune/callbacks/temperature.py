"""``TemperatureAnnealing``: drive every gate's temperature along a named schedule."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.callbacks.schedules import get_schedule, progress_between

__all__ = ["TemperatureAnnealing"]


class TemperatureAnnealing(Callback):
    r"""Anneal the ``temperature`` buffer of every gate along a schedule.

    The temperature is the slope ``k`` of sigmoid gates, ``tau`` of Gumbel gates and ``beta``
    of hard-concrete gates. It lives in each gate's buffer, so checkpoints carry it; this
    callback only writes it. Typical settings:

    * paper 1 (sigmoid): ``schedule="cubic", start=5, end=30`` between two epochs;
    * Continuous Sparsification: ``schedule="exponential", start=1, end=200``, per epoch
      (``beta_e = 200 ** (e / (E - 1))``);
    * DPP (Gumbel top-k): ``schedule="linear", start=5, end=0.5``.

    With ``interval="epoch"`` the value is set at the start of each epoch ``e`` from
    ``(e - start_epoch) / (end_epoch - start_epoch)``; ``end_epoch`` defaults to
    ``max_epochs - 1``, so the last epoch trains at ``end``. With ``interval="step"`` it is set
    before every batch from the fractional epoch ``epoch + batch_idx / batches_per_epoch``;
    ``end_epoch`` defaults to ``max_epochs`` (``end`` is reached as training ends).

    The value is logged as ``prune/temperature``.

    Args:
        schedule: a name from :data:`~lightning_prune.callbacks.schedules.SCHEDULES`
            (``linear``, ``cosine``, ``exponential``, ``cubic``, ``cubic_in``, ``constant``,
            ``step``).
        start: value at ``start_epoch`` (``None``: the gate family's
            ``default_temperature_range[0]``, e.g. 5 for sigmoid gates).
        end: value at ``end_epoch`` (``None``: ``default_temperature_range[1]``, e.g. 30).
        start_epoch: epoch at which annealing starts (the value is ``start`` before).
        end_epoch: epoch at which it reaches ``end`` (see above for the default).
        interval: ``"epoch"`` or ``"step"``.
        log: log the value with ``pl_module.log``.

    Raises:
        ValueError: for an unknown schedule or interval, non-positive values, or
            ``end_epoch <= start_epoch``.

    Example:
        >>> from lightning_prune.callbacks import TemperatureAnnealing
        >>> cb = TemperatureAnnealing("exponential", start=1.0, end=200.0, end_epoch=10)
        >>> round(cb.value_at(5.0), 4)  # sqrt(200)
        14.1421
    """

    def __init__(
        self,
        schedule: str = "cubic",
        start: float | None = None,
        end: float | None = None,
        start_epoch: float = 0,
        end_epoch: float | None = None,
        interval: Literal["epoch", "step"] = "epoch",
        log: bool = True,
    ) -> None:
        self.schedule_fn = get_schedule(schedule)
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}.")
        for name, value in (("start", start), ("end", end)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive temperature, got {value}.")
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}.")
        if end_epoch is not None and end_epoch <= start_epoch:
            raise ValueError(
                f"end_epoch ({end_epoch}) must be greater than start_epoch ({start_epoch}); for a "
                "fixed temperature use schedule='constant'."
            )
        if start is not None and end is not None:
            self.schedule_fn(0.5, start, end)  # e.g. exponential rejects non-positive values
        self.schedule = schedule
        self.start = start
        self.end = end
        self.start_epoch = float(start_epoch)
        self.end_epoch = None if end_epoch is None else float(end_epoch)
        self.interval = interval
        self.log = log
        self.value: float | None = None
        self._resolved: dict[str, float] = {}
        self._warned = False

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(schedule=self.schedule, interval=self.interval)

    # ------------------------------------------------------------------------- resolution
    def _resolve(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._resolved:
            return
        gates = lp.get_gates(pl_module)
        default = type(gates[0]).default_temperature_range if gates else (1.0, 1.0)
        start = self.start if self.start is not None else float(default[0])
        end = self.end if self.end is not None else float(default[1])
        end_epoch = self.end_epoch
        if end_epoch is None:
            max_epochs = trainer.max_epochs
            if max_epochs is None or max_epochs < 1:
                raise MisconfigurationException(
                    "TemperatureAnnealing needs `end_epoch` when the Trainer has no max_epochs "
                    "(e.g. max_steps-only training): pass TemperatureAnnealing(end_epoch=...)."
                )
            # (end_epoch <= start_epoch, e.g. a single epoch, switches straight to `end`)
            end_epoch = float(max_epochs - 1 if self.interval == "epoch" else max_epochs)
        self._resolved = {"start": start, "end": end, "end_epoch": end_epoch}

    def value_at(self, epoch: float) -> float:
        """The temperature at a (fractional) epoch, with resolved or given settings."""
        start = self._resolved.get("start", self.start if self.start is not None else 1.0)
        end = self._resolved.get("end", self.end if self.end is not None else 1.0)
        end_epoch = self._resolved.get(
            "end_epoch", self.end_epoch if self.end_epoch is not None else 1.0
        )
        progress = progress_between(epoch, self.start_epoch, end_epoch)
        return self.schedule_fn(progress, start, end)

    def _apply(self, pl_module: LightningModule, value: float) -> bool:
        gates = lp.get_gates(pl_module)
        if not gates:
            if not self._warned:
                rank_zero_warn(
                    "TemperatureAnnealing found no gates in the model; use PrunableMixin or the "
                    "RelaxedPruning callback (or lightning_prune.augment) to insert them."
                )
                self._warned = True
            return False
        for gate in gates:
            temperature: torch.Tensor = gate.temperature  # type: ignore[assignment]
            temperature.fill_(value)
        self.value = value
        return True

    # ------------------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resolved = {}
        self._resolve(trainer, pl_module)
        self._apply(
            pl_module,
            self.value if self.value is not None else self.value_at(trainer.current_epoch),
        )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.interval != "epoch":
            return
        self._resolve(trainer, pl_module)
        value = self.value_at(trainer.current_epoch)
        if self._apply(pl_module, value) and self.log:
            pl_module.log("prune/temperature", value, on_step=False, on_epoch=True, batch_size=1)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval != "step":
            return
        self._resolve(trainer, pl_module)
        per_epoch = trainer.num_training_batches
        fraction = batch_idx / per_epoch if math.isfinite(per_epoch) and per_epoch > 0 else 0.0
        value = self.value_at(trainer.current_epoch + fraction)
        if self._apply(pl_module, value) and self.log:
            pl_module.log("prune/temperature", value, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------------------ state
    # The schedule is a pure function of the (fractional) epoch, so the position in it comes
    # back with the loops' state; defaults are re-resolved against the resuming Trainer (so a
    # run resumed with a larger max_epochs stretches the schedule, as a straight run would).
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.value = state_dict.get("value")
