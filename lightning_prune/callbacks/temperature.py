"""``TemperatureAnnealing``: drive every gate's (and DPP mask's) temperature along a schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.callbacks.schedules import get_schedule, progress_between
from lightning_prune.dpp import TopKMask, get_dpp_masks
from lightning_prune.module import state as model_state
from lightning_prune.module.step import run_epochs

__all__ = ["TemperatureAnnealing"]

#: The families of modules with a ``temperature`` buffer: channel gates, kernel/weight DPP masks.
Family = Literal["gates", "dpp_masks"]
FAMILIES: tuple[Family, ...] = ("gates", "dpp_masks")
#: Logged key of each family's value.
LOG_KEYS: dict[str, str] = {"gates": "prune/temperature", "dpp_masks": "prune/dpp/temperature"}
DEFAULT_SCHEDULE = "cubic"


def family_modules(model: nn.Module, family: str) -> list[nn.Module]:
    """The modules of ``family`` in ``model``: its channel gates or its DPP masks."""
    if family == "gates":
        return list(lp.get_gates(model))
    return list(get_dpp_masks(model))


def family_defaults(modules: list[nn.Module], family: str) -> tuple[tuple[float, float], str]:
    """``(default (start, end), default schedule name)`` of a family's modules.

    Gate classes give ``default_temperature_range`` (and optionally
    ``default_temperature_schedule``, else cubic); DPP masks anneal 5 -> 0.5 linearly.
    """
    cls: Any = type(modules[0]) if modules else (TopKMask if family == "dpp_masks" else None)
    if cls is None:
        return (1.0, 1.0), DEFAULT_SCHEDULE
    start, end = cls.default_temperature_range
    schedule = getattr(cls, "default_temperature_schedule", DEFAULT_SCHEDULE)
    return (float(start), float(end)), schedule


class TemperatureAnnealing(Callback):
    r"""Anneal the ``temperature`` buffer of every gate and DPP mask along a schedule.

    The temperature is the slope ``k`` of sigmoid gates, ``tau`` of Gumbel gates (and of
    kernel/weight DPP masks) and ``beta`` of hard-concrete gates. It lives in each module's
    buffer, so checkpoints carry it; this callback only writes it. Typical settings:

    * paper 1 (sigmoid): ``schedule="cubic", start=5, end=30`` between two epochs;
    * Continuous Sparsification: ``schedule="exponential", start=1, end=200``, per epoch
      (``beta_e = 200 ** (e / (E - 1))``);
    * DPP (Gumbel top-k gates, kernel/weight masks): ``schedule="linear", start=5, end=0.5``
      (also what their defaults give).

    Two families are annealed: the channel gates (``targets="gates"``) and the kernel/weight
    DPP masks of :func:`lightning_prune.dpp.apply_dpp` (``targets="dpp_masks"``); ``"all"``
    does both. Without ``schedule`` / ``start`` / ``end``, each family uses its own defaults
    (``default_temperature_range`` and ``default_temperature_schedule`` of its class, cubic when
    a class names none): e.g. sigmoid gates cubic 5 -> 30 and DPP masks linear 5 -> 0.5 in the
    same run. Given values apply to every targeted family, so with sigmoid gates *and* DPP
    masks use one callback per family (``targets``).

    Inside a pruning run (a module with :class:`~lightning_prune.PrunableMixin` or the
    :class:`RelaxedPruning` callback), with ``follow_schedule`` and without ``start_epoch`` /
    ``end_epoch``, the schedule
    follows the run's :class:`~lightning_prune.PruningSchedule`: ``start`` while the target
    ramps, then annealed over the rest of the structure phase (set before every batch from the
    global step), so the gates reach ``end`` exactly when the structure is fixed, however long
    the run.

    Otherwise, with ``interval="epoch"`` the value is set at the start of each epoch ``e`` from
    ``(e - start_epoch) / (end_epoch - start_epoch)``; ``end_epoch`` defaults to
    ``max_epochs - 1``, so the last epoch trains at ``end``. With ``interval="step"`` it is set
    before every batch from the fractional epoch ``epoch + batch_idx / batches_per_epoch``;
    ``end_epoch`` defaults to ``max_epochs`` (``end`` is reached as training ends).

    The value is logged as ``prune/temperature`` (gates) and ``prune/dpp/temperature`` (DPP
    masks).

    Args:
        schedule: a name from :data:`~lightning_prune.callbacks.schedules.SCHEDULES`
            (``linear``, ``cosine``, ``exponential``, ``cubic``, ``cubic_in``, ``constant``,
            ``step``); ``None``: each family's default (see above).
        start: value at ``start_epoch`` (``None``: the family's
            ``default_temperature_range[0]``, e.g. 5 for sigmoid gates).
        end: value at ``end_epoch`` (``None``: ``default_temperature_range[1]``, e.g. 30).
        start_epoch: epoch at which annealing starts (the value is ``start`` before).
        end_epoch: epoch at which it reaches ``end`` (see above for the default).
        interval: ``"epoch"`` or ``"step"``.
        log: log the value with ``pl_module.log``.
        targets: ``"all"``, ``"gates"`` or ``"dpp_masks"``.
        follow_schedule: inside a pruning run, anneal over its structure phase (see above);
            ``False``: by epochs as outside one.

    Raises:
        ValueError: for an unknown schedule, interval or target, non-positive values, or
            ``end_epoch <= start_epoch``.

    Example:
        >>> from lightning_prune.callbacks import TemperatureAnnealing
        >>> cb = TemperatureAnnealing("exponential", start=1.0, end=200.0, end_epoch=10)
        >>> round(cb.value_at(5.0), 4)  # sqrt(200)
        14.1421
    """

    def __init__(
        self,
        schedule: str | None = None,
        start: float | None = None,
        end: float | None = None,
        start_epoch: float = 0,
        end_epoch: float | None = None,
        interval: Literal["epoch", "step"] = "epoch",
        log: bool = True,
        targets: Literal["all", "gates", "dpp_masks"] = "all",
        follow_schedule: bool = True,
    ) -> None:
        self.schedule_fn = get_schedule(schedule) if schedule is not None else None
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}.")
        if targets not in ("all", *FAMILIES):
            raise ValueError(f"targets must be 'all', 'gates' or 'dpp_masks', got {targets!r}.")
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
        if self.schedule_fn is not None and start is not None and end is not None:
            self.schedule_fn(0.5, start, end)  # e.g. exponential rejects non-positive values
        self.schedule = schedule
        self.start = start
        self.end = end
        self.start_epoch = float(start_epoch)
        self.end_epoch = None if end_epoch is None else float(end_epoch)
        self.interval = interval
        self.log = log
        self.targets = targets
        self.follow_schedule = bool(follow_schedule)
        #: Last value set on the gates (``None`` before the first).
        self.value: float | None = None
        #: Last value set on the DPP masks (``None`` before the first).
        self.dpp_value: float | None = None
        self._resolved: dict[str, dict[str, Any]] = {}
        self._end_epoch: float | None = None
        self._warned = False

    @property
    def families(self) -> tuple[Family, ...]:
        """The families this callback anneals."""
        return FAMILIES if self.targets == "all" else (self.targets,)

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        keys: dict[str, Any] = {
            "schedule": self.schedule if self.schedule is not None else DEFAULT_SCHEDULE,
            "interval": self.interval,
        }
        if self.targets != "all":
            keys["targets"] = self.targets
        return self._generate_state_key(**keys)

    # ------------------------------------------------------------------------- resolution
    def _resolve(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._resolved:
            return
        for family in self.families:
            (start, end), schedule = family_defaults(family_modules(pl_module, family), family)
            self._resolved[family] = {
                "start": self.start if self.start is not None else start,
                "end": self.end if self.end is not None else end,
                "fn": self.schedule_fn or get_schedule(schedule),
            }
        end_epoch = self.end_epoch
        if end_epoch is None:
            epochs = run_epochs(trainer)
            if epochs is None and self._follows_schedule_only(trainer, pl_module):
                epochs = 1.0  # never read: the gates follow the structure phase per step
            if epochs is None:
                raise MisconfigurationException(
                    "TemperatureAnnealing needs `end_epoch` when the run's length in epochs is "
                    "unknown (`max_time` alone, or `max_steps` with a training dataloader of "
                    "unknown length): pass TemperatureAnnealing(end_epoch=...)."
                )
            # (end_epoch <= start_epoch, e.g. a single epoch, switches straight to `end`)
            end_epoch = epochs - 1 if self.interval == "epoch" else epochs
        self._end_epoch = end_epoch

    def _follows_schedule_only(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether every family with modules anneals over a pruning schedule (per step).

        The DPP masks always follow epochs; the gates follow the structure phase of the
        schedule that ``RelaxedPruning`` set already or a ``PrunableMixin`` sets as ``fit``
        starts (after the callbacks' ``on_fit_start``).
        """
        if not (self.follow_schedule and self.end_epoch is None and self.start_epoch == 0):
            return False
        scheduled = model_state.schedule_of(pl_module) is not None or hasattr(
            pl_module, "pruning_schedule"
        )
        present = [f for f in self.families if family_modules(pl_module, f)]
        return all(family == "gates" and scheduled for family in present)

    def _structure_progress(self, trainer: Trainer, pl_module: LightningModule) -> float | None:
        """Progress through the run's structure phase, when the schedule follows it."""
        if not self.follow_schedule or self.end_epoch is not None or self.start_epoch != 0:
            return None
        schedule = model_state.schedule_of(pl_module)
        if schedule is None:
            return None
        return float(schedule.anneal_progress(int(trainer.global_step)))

    def _value(self, family: Family, progress: float) -> float:
        resolved = self._resolved[family]
        return float(resolved["fn"](progress, resolved["start"], resolved["end"]))

    def value_at(self, epoch: float, family: Family = "gates") -> float:
        """The temperature of ``family`` at a (fractional) epoch (resolved or given settings)."""
        resolved = self._resolved.get(family, {})
        default_start, default_end = (5.0, 0.5) if family == "dpp_masks" else (1.0, 1.0)
        start = resolved.get("start", self.start if self.start is not None else default_start)
        end = resolved.get("end", self.end if self.end is not None else default_end)
        fn: Callable[[float, float, float], float] = resolved.get(
            "fn", self.schedule_fn or get_schedule("linear" if family == "dpp_masks" else "cubic")
        )
        end_epoch = self._end_epoch
        if end_epoch is None:
            end_epoch = self.end_epoch if self.end_epoch is not None else 1.0
        progress = progress_between(epoch, self.start_epoch, end_epoch)
        return fn(progress, start, end)

    def _set(self, pl_module: nn.Module, family: str, value: float) -> bool:
        modules = family_modules(pl_module, family)
        for module in modules:
            temperature: torch.Tensor = module.temperature  # type: ignore[assignment]
            temperature.fill_(value)
        if modules:
            if family == "gates":
                self.value = value
            else:
                self.dpp_value = value
        return bool(modules)

    def _apply(
        self,
        pl_module: LightningModule,
        epoch: float,
        stored: bool = False,
        progress: float | None = None,
        families: tuple[Family, ...] | None = None,
    ) -> dict[str, float]:
        """Set the targeted families' values; returns ``{log key: value}`` set.

        The channel gates' value at ``progress`` through the structure phase when given (the
        DPP masks are not part of it and always follow ``epoch``), else at ``epoch``.
        """
        applied = {}
        for family in self.families if families is None else families:
            saved = self.value if family == "gates" else self.dpp_value
            if stored and saved is not None:
                value = saved
            elif progress is not None and family == "gates":
                value = self._value(family, progress)
            else:
                value = self.value_at(epoch, family)
            if self._set(pl_module, family, value):
                applied[LOG_KEYS[family]] = value
        # a call restricted to some families (the DPP masks at an epoch start while the gates
        # follow the structure phase per step) says nothing about the others: no warning
        everything = families is None or set(families) == set(self.families)
        if (
            not applied
            and everything
            and not self._warned
            and not model_state.was_collapsed(pl_module)
        ):
            rank_zero_warn(
                "TemperatureAnnealing found no gates or DPP masks in the model (targets="
                f"{self.targets!r}); use PrunableMixin or the RelaxedPruning callback (or "
                "lightning_prune.augment) to insert gates, or DynamicProbabilisticPruning for "
                "DPP masks."
            )
            self._warned = True
        return applied

    # ------------------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resolved = {}
        self._resolve(trainer, pl_module)
        self._apply(
            pl_module,
            trainer.current_epoch,
            stored=True,
            progress=self._structure_progress(trainer, pl_module),
        )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.interval != "epoch":
            return
        families = self.families
        if self._structure_progress(trainer, pl_module) is not None:  # gates move per step
            families = tuple(f for f in families if f != "gates")
        if not families:
            return
        self._resolve(trainer, pl_module)
        applied = self._apply(pl_module, trainer.current_epoch, families=families)
        if self.log:
            for key, value in applied.items():
                pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        progress = self._structure_progress(trainer, pl_module)
        if self.interval != "step" and progress is None:
            return
        families = self.families
        if self.interval != "step":  # only the gates follow the structure phase per step
            families = tuple(f for f in families if f == "gates")
        if not families:
            return
        self._resolve(trainer, pl_module)
        per_epoch = trainer.num_training_batches
        fraction = batch_idx / per_epoch if math.isfinite(per_epoch) and per_epoch > 0 else 0.0
        applied = self._apply(
            pl_module, trainer.current_epoch + fraction, progress=progress, families=families
        )
        if self.log:
            for key, value in applied.items():
                pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)

    # ------------------------------------------------------------------------------ state
    # The schedule is a pure function of the (fractional) epoch, so the position in it comes
    # back with the loops' state; defaults are re-resolved against the resuming Trainer (so a
    # run resumed with a larger max_epochs stretches the schedule, as a straight run would).
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "dpp_value": self.dpp_value}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.value = state_dict.get("value")
        self.dpp_value = state_dict.get("dpp_value")
