"""``RelaxedPruning``: the whole pruning pipeline for an unmodified LightningModule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.callbacks._hooks import InstanceHook, hook_owner, install_hook, uninstall_hooks
from lightning_prune.callbacks.collapse import NetworkCollapse
from lightning_prune.callbacks.monitor import SparsityMonitor
from lightning_prune.callbacks.temperature import TemperatureAnnealing
from lightning_prune.module import companions
from lightning_prune.module import optim as gate_optim
from lightning_prune.module import state as model_state
from lightning_prune.module.batches import training_batch_inputs
from lightning_prune.module.mixin import PrunableMixin
from lightning_prune.module.state import default_example_inputs
from lightning_prune.module.step import attached_trainer
from lightning_prune.module.structure import StructureLearning, resolve_schedule_argument
from lightning_prune.penalties import DEFAULT_TARGET, SparsityPenalty, default_penalty
from lightning_prune.schedule import PruningSchedule

__all__ = ["RelaxedPruning", "default_example_inputs"]

MIXIN_CONFLICT = (
    "RelaxedPruning was given {name}, a PrunableMixin module, which already inserts gates and "
    "adds the penalty. Use one or the other: remove the RelaxedPruning callback, or drop "
    "PrunableMixin from {name}'s bases."
)
NO_EXAMPLE = (
    "RelaxedPruning needs example inputs to find the channel groups of {name}: it has no "
    "`example_input_array` and there is no training batch to take one from. Set "
    "`model.example_input_array = torch.zeros(2, 3, H, W)` (a batch shaped like the input)."
)

_WRAPPED = (
    "training_step",
    "configure_optimizers",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "configure_model",
)


#: Kept for code that referred to the old private name.
_Wrapped = InstanceHook
_owner = hook_owner


class RelaxedPruning(Callback):
    """Structured pruning by continuous relaxation for any LightningModule, as one callback.

    Add it to the ``Trainer`` and the module, unchanged, is pruned:

    1. ``setup``: gates are inserted (before ``configure_optimizers``, so the optimizer sees
       them). Example inputs come from ``pl_module.example_input_array`` or, when the module
       has none, from the first training batch: the callback sets up the train dataloader early
       with ``trainer.fit_loop.setup_data()`` and peeks at ``next(iter(trainer.train_dataloader))``
       under ``torch.random.fork_rng`` (so the data order of training is not disturbed), keeping
       two samples of the input (``input_key`` picks it from tuple / dict batches). Workers of
       that extra iterator start once; stateful-dataloader resumption is not supported on this
       path (set ``example_input_array`` instead).
    2. The penalty is added to what ``training_step`` returns: the callback replaces the
       module's ``training_step`` with a wrapper on the instance for the duration of ``fit``
       (removed in ``teardown``). This is the only point where the loss can change so that
       gradients are exactly those of ``loss + penalty``: Lightning then divides by
       ``accumulate_grad_batches``, scales under AMP and runs it inside the DDP forward.
       ``on_train_batch_end`` and ``on_before_backward`` would be too late.
    3. ``fit`` follows a :class:`~lightning_prune.PruningSchedule` derived from the run's
       length and shown as a table when it starts: in the structure phase the FLOPs target
       ramps from 1 down to ``target`` while the gates learn (with their own Adam optimizer,
       taken out of the module's, at a learning rate derived from the phase's length), then
       holds while the temperature anneal (:class:`TemperatureAnnealing`) makes them binary;
       then the controller snaps to the budget, the share of units the gates did not decide
       themselves is logged (``prune/snap_share``; a warning above 5%), the gates are frozen,
       and :class:`NetworkCollapse` collapses the network and rebuilds the optimizers, so
       the final phase trains the compact network that is saved at the end of ``fit``.
       Sparsity is logged throughout (:class:`SparsityMonitor`).
    4. Checkpoints: the module's ``on_save_checkpoint`` / ``on_load_checkpoint`` are wrapped the
       same way, so resuming (also after a staged collapse) rebuilds the structure before the
       weights load. The callback's own state holds the controller and the sub-callbacks.

    With the defaults the network is trained to half its FLOPs (``target=0.5``, an adaptive
    controller on the hard FLOPs) with sigmoid gates annealed from slope 5 to 30; the same
    defaults as :class:`~lightning_prune.PrunableMixin`, the ready modules and the CLI configs.
    Using it on a :class:`~lightning_prune.PrunableMixin` module is an error. Another ``fit``
    with the same callback trains the compact network on; a new ``RelaxedPruning`` on a module
    an earlier run collapsed prunes it again, ``target`` relative to its current FLOPs (what it
    saves rebuilds from the original class: the plans compose).

    Args:
        target: FLOPs ratio to reach (ignored when ``penalty`` is given; ``None`` without a
            penalty: paper 1's open-loop ``0.5 * |A / A_dense|``).
        penalty: a full :class:`~lightning_prune.penalties.SparsityPenalty` instead.
        schedule: the phase split (default :class:`~lightning_prune.PruningSchedule`).
        gate: gate family name.
        gate_kwargs: keyword arguments of the gate class.
        exclude: module path patterns never pruned.
        gate_init: importance criterion seeding the gates' starting order (``"magnitude"``,
            ``"l1"``; ``None``: uniform start; see :func:`lightning_prune.init_gates`).
        gate_init_spread: half-width of that seeding in logit units.
        temperature_schedule: temperature schedule name (``None``: no annealing).
        temperature: ``(start, end)`` of the schedule (``None``: the gate family's default).
        anneal_interval: anneal per ``"step"`` or per ``"epoch"`` (over the structure phase).
        monitor: add a :class:`SparsityMonitor`.
        log_every_n_steps: its period (``None``: the Trainer's).
        collapse: add a :class:`NetworkCollapse` (collapse at the end of ``fit``).
        dirpath: where it saves the compact weights and plan (``None``: the log dir).
        filename: their file stem.
        round_to: round kept widths up to a multiple of this.
        export_onnx: also write the collapsed network as a checked ONNX file next to its plan
            (``pruned.onnx``, :func:`lightning_prune.export_onnx`; needs the ``deploy`` extra).
        gate_optimizer: ``"adam"``: the gates' own optimizer; ``"shared"``: the module's.
        separate_gate_group: with ``"shared"``, give gate parameters their own optimizer group.
        gate_lr: learning rate of the gates (``None``: derived from the schedule; with
            ``"shared"``: that of the group they came from).
        gate_weight_decay: that group's weight decay (``"shared"`` only).
        input_key: where the input sits in a training batch (index or dict key), for peeking.

    Raises:
        ValueError: for bad arguments (unknown schedule or gate, target outside (0, 1]).

    Example:
        >>> from lightning_prune.callbacks import RelaxedPruning
        >>> cb = RelaxedPruning(target=0.3, exclude=["net.fc"])
        >>> cb.penalty.controller.target
        0.3
        >>> trainer = L.Trainer(callbacks=[cb])  # doctest: +SKIP
    """

    def __init__(
        self,
        target: float | None = DEFAULT_TARGET,
        penalty: SparsityPenalty | None = None,
        schedule: PruningSchedule | None = None,
        gate: str = "sigmoid",
        gate_kwargs: dict[str, Any] | None = None,
        exclude: Sequence[str] = (),
        gate_init: str | None = None,
        gate_init_spread: float = 2.0,
        temperature_schedule: str | None = "cubic",
        temperature: tuple[float, float] | None = None,
        anneal_interval: Literal["step", "epoch"] = "step",
        monitor: bool = True,
        log_every_n_steps: int | None = None,
        collapse: bool = True,
        dirpath: str | None = None,
        filename: str = "pruned",
        round_to: int = 1,
        export_onnx: bool = False,
        gate_optimizer: Literal["adam", "shared"] = "adam",
        separate_gate_group: bool = True,
        gate_lr: float | None = None,
        gate_weight_decay: float = 0.0,
        input_key: int | str | None = None,
    ) -> None:
        try:
            self.gate_setup = model_state.GateSetup(
                gate, dict(gate_kwargs or {}), tuple(exclude), gate_init, gate_init_spread
            )
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        if not self.gate_setup.enabled:
            raise ValueError(
                "RelaxedPruning inserts channel gates, so gate=None makes no sense here; for "
                "kernel/weight DPP without channel gates use the DynamicProbabilisticPruning "
                "callback alone."
            )
        if penalty is None:
            penalty = default_penalty(target)
        elif not isinstance(penalty, SparsityPenalty):
            raise TypeError(f"penalty must be a SparsityPenalty, got {type(penalty).__name__}.")
        if temperature is not None and len(tuple(temperature)) != 2:
            raise ValueError(f"temperature is a (start, end) pair, got {temperature!r}.")
        self.penalty = penalty
        self.structure = StructureLearning(
            penalty,
            resolve_schedule_argument(schedule, gate_lr, gate_optimizer),
            gate_optimizer=gate_optimizer,
            owner="RelaxedPruning",
        )
        self.separate_gate_group = separate_gate_group
        self.gate_lr = gate_lr
        self.gate_weight_decay = gate_weight_decay
        self.input_key = input_key
        self.callbacks: dict[str, Callback] = {}
        if temperature_schedule is not None:
            start, end = temperature if temperature is not None else (None, None)
            self.callbacks["annealing"] = TemperatureAnnealing(
                temperature_schedule, start, end, interval=anneal_interval
            )
        if monitor:
            self.callbacks["monitor"] = SparsityMonitor(log_every_n_steps=log_every_n_steps)
        if collapse:
            self.callbacks["collapse"] = NetworkCollapse(
                dirpath=dirpath, filename=filename, round_to=round_to, export_onnx=export_onnx
            )
        elif export_onnx:
            raise ValueError(
                "RelaxedPruning(export_onnx=True) exports the collapsed network, so it needs "
                "collapse=True (or add NetworkCollapse(export_onnx=True) yourself)."
            )
        self._example: torch.Tensor | tuple[torch.Tensor, ...] | None = None

    # ------------------------------------------------------------------------ wrapping
    def _around_training_step(self, original: Callable, *args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        module = _owner(original)
        if not module.automatic_optimization:
            return output
        return self.structure.add_penalty(module, output)

    def _around_configure_optimizers(self, original: Callable, *args: Any, **kwargs: Any) -> Any:
        configured = original(*args, **kwargs)
        module = _owner(original)
        if self.structure.owns_gate_optimizer:
            gate_optim.remove_parameters(configured, gate_optim.gate_parameters(module))
        elif self.separate_gate_group:
            moved = gate_optim.isolate_gate_parameters(
                configured, module, self.gate_lr, self.gate_weight_decay
            )
            if moved:
                rank_zero_info(
                    f"RelaxedPruning: {moved} gate parameters in their own optimizer group."
                )
        return configured

    def _around_on_save_checkpoint(
        self, original: Callable, checkpoint: dict[str, Any], *a: Any, **k: Any
    ) -> Any:
        result = original(checkpoint, *a, **k)
        checkpoint[model_state.CHECKPOINT_KEY] = model_state.checkpoint_state(_owner(original))
        return result

    def _around_on_load_checkpoint(
        self, original: Callable, checkpoint: dict[str, Any], *a: Any, **k: Any
    ) -> Any:
        module = _owner(original)
        model_state.restore_structure(module, checkpoint.get(model_state.CHECKPOINT_KEY))
        # an EMA / SWA copy made in `setup` has the shapes of before: the callbacks load next
        companions.reseed_averaging(attached_trainer(module), module)
        return original(checkpoint, *a, **k)

    def _around_configure_model(self, original: Callable, *args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        self._augment(_owner(original))
        return result

    def _install(self, pl_module: LightningModule, names: Sequence[str]) -> None:
        for name in names:
            install_hook(pl_module, name, getattr(self, f"_around_{name}"), owner=self)

    def _uninstall(self, pl_module: LightningModule) -> None:
        uninstall_hooks(pl_module, owner=self)

    # ---------------------------------------------------------------------- example input
    def _peek_example(self, trainer: Trainer, pl_module: LightningModule) -> torch.Tensor:
        example = training_batch_inputs(trainer, self.input_key)
        if example is None:
            raise lp.ExampleInputError(NO_EXAMPLE.format(name=type(pl_module).__name__))
        return example

    def _augment(self, pl_module: LightningModule) -> None:
        if lp.is_augmented(pl_module):
            return
        if model_state.was_collapsed(pl_module) and self.structure.finished:
            return  # another fit with this callback: the compact network trains on
        # (a module collapsed by an earlier pruning run is pruned again, relative to its size)
        example = self._example
        if example is None:
            example = model_state.example_inputs_of(pl_module, owner="RelaxedPruning")
        gates = model_state.augment_module(pl_module, example, self.gate_setup)
        rank_zero_info(
            f"RelaxedPruning: {len(gates)} channel groups gated "
            f"({sum(g.num_channels for g in gates)} channels, {self.gate_setup.gate} gates)."
        )

    # --------------------------------------------------------------------------- hooks
    def _forward(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks.values():
            getattr(callback, hook)(*args)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if isinstance(pl_module, PrunableMixin):
            raise MisconfigurationException(MIXIN_CONFLICT.format(name=type(pl_module).__name__))
        self._install(pl_module, ("on_save_checkpoint", "on_load_checkpoint"))
        if stage == "fit":
            self._example = None
            if pl_module.example_input_array is None and not lp.is_augmented(pl_module):
                self._example = self._peek_example(trainer, pl_module)
            self._install(pl_module, ("training_step", "configure_optimizers"))
            if is_overridden("configure_model", pl_module):
                self._install(pl_module, ("configure_model",))
            else:
                self._augment(pl_module)
        self._forward("setup", trainer, pl_module, stage)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._forward("teardown", trainer, pl_module, stage)
        self._uninstall(pl_module)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.structure.start(trainer, pl_module)
        self._forward("on_fit_start", trainer, pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        self.structure.before_optimizer_step(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._forward("on_train_epoch_start", trainer, pl_module)

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._forward("on_train_batch_start", trainer, pl_module, batch, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.structure.after_batch(trainer, pl_module)
        self._forward("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._forward("on_train_epoch_end", trainer, pl_module)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.structure.on_train_end(trainer, pl_module)
        self._forward("on_train_end", trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._forward("on_fit_end", trainer, pl_module)

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._forward("on_save_checkpoint", trainer, pl_module, checkpoint)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "structure": self.structure.state_dict(),
            "callbacks": {name: cb.state_dict() for name, cb in self.callbacks.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("structure"):
            self.structure.load_state_dict(state_dict["structure"])
        else:  # written before the schedule existed
            self.penalty.load_state_dict(state_dict.get("penalty") or {})
        saved = state_dict.get("callbacks") or {}
        for name, callback in self.callbacks.items():
            if name in saved:
                callback.load_state_dict(saved[name])
