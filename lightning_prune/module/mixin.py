"""``PrunableMixin``: gates and the sparsity penalty for any LightningModule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule

import lightning_prune as lp
from lightning_prune.gates import ChannelGate
from lightning_prune.module import optim as gate_optim
from lightning_prune.module import state as model_state
from lightning_prune.module.hooks import wrap_class
from lightning_prune.module.structure import StructureLearning, resolve_schedule_argument
from lightning_prune.penalties import DEFAULT_TARGET, SparsityPenalty, default_penalty
from lightning_prune.schedule import PruningSchedule

__all__ = ["PrunableMixin"]


def _next_definer(cls: type, name: str) -> type | None:
    """The first class after ``PrunableMixin`` in ``cls``'s MRO that defines ``name``."""
    mro = cls.__mro__
    for klass in mro[mro.index(PrunableMixin) + 1 :]:
        if name in klass.__dict__:
            return klass
    return None


class PrunableMixin:
    """Gives a LightningModule relaxed channel gates, the sparsity penalty and its schedule.

    Put it *before* ``LightningModule`` in the bases. With no arguments the network is pruned to
    half its FLOPs (``target=0.5``) with the defaults shared by every entry point (see the
    README's defaults table). Then:

    * ``configure_model`` inserts one gate per channel group (idempotent), tracing the network
      with ``self.example_input_array``.
    * when ``fit`` starts, the :class:`~lightning_prune.PruningSchedule` is resolved against the
      run's length and shown as a table: a structure phase (the target ramps from 1 down to
      ``target`` while gates learn, then holds while they turn binary) and a final phase on
      the fixed structure.
    * whatever ``training_step`` returns (a loss tensor or a dict with ``"loss"``) gets the
      sparsity penalty added, so gradients are those of ``loss + penalty`` (also under gradient
      accumulation, mixed precision and DDP); every term is logged under ``prune/penalty/``.
    * the gates are trained by their own Adam optimizer (``gate_optimizer="adam"``) at a
      learning rate derived from the schedule, whatever optimizer ``configure_optimizers``
      returns (they are taken out of it); ``gate_optimizer="shared"`` leaves them in it, in a
      param group of their own with no weight decay.
    * when the structure phase ends, the controller snaps to the budget, the share of units the
      gates did not decide themselves is logged (``prune/snap_share``) and the gates are frozen
      at their hard masks: the final phase trains the structure that is saved.
      :class:`~lightning_prune.callbacks.NetworkCollapse` then collapses the network and
      rebuilds the optimizers.
    * checkpoints carry the gates, the controller and schedule state and, after a collapse, the
      channel plan, which ``on_load_checkpoint`` applies before the weights load, so
      ``load_from_checkpoint`` rebuilds a pruned model (also with ``weights_only=True``);
      kernel/weight DPP masks saved in the weights are re-created the same way
      (:func:`lightning_prune.dpp.restore_dpp_masks`).

    Hooks you define (``training_step``, ``configure_model``, ``configure_optimizers``,
    ``on_fit_start``, ``on_before_optimizer_step``, ``on_train_batch_end``, ``on_train_end``,
    ``on_save_checkpoint``, ``on_load_checkpoint``) are wrapped when the class is created;
    calling ``super()`` in them is fine and never applies anything twice. With manual
    optimization nothing is added: call ``loss = loss + self.compute_sparsity_penalty()``
    yourself.

    After :class:`~lightning_prune.callbacks.NetworkCollapse` collapsed the network, no gates
    are re-inserted and no penalty is added: fine-tuning or testing the compact network just
    works.

    ``gate=None`` (YAML ``gate: null`` or ``gate: none``) inserts no channel gates: for kernel-
    or weight-granularity DPP alone
    (:class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`).
    The penalty then defaults to no terms and may only hold terms that need no gates
    (``dpp_entropy``); it is added while the model carries DPP masks.

    Args:
        target: FLOPs ratio ``A / A_dense`` to reach (0.5 keeps half the FLOPs), by the default
            penalty (:func:`~lightning_prune.penalties.default_penalty`); ignored when
            ``penalty`` is given.
        gate: gate family name (``"sigmoid"``, ``"hard_concrete"``, ``"gumbel_topk"``), or
            ``None`` / ``"none"`` for no channel gates.
        gate_kwargs: keyword arguments of the gate class (e.g. ``{"temperature": 5.0}``).
        exclude: module path patterns never pruned (``fnmatch``; a prefix covers submodules).
        gate_init: seed the gates' starting order from an importance criterion when they are
            inserted (``"magnitude"``: |BN scale| or filter norm; ``"l1"``); ``None`` (default):
            every gate starts alike, as in the paper.
        gate_init_spread: half-width of that seeding in logit units (see
            :func:`lightning_prune.init_gates`).
        penalty: the sparsity penalty (default: ``target`` through an adaptive controller;
            with ``gate=None``: no terms).
        schedule: the phase split (default :class:`~lightning_prune.PruningSchedule`).
        gate_optimizer: ``"adam"``: the gates' own optimizer; ``"shared"``: the module's.
        separate_gate_group: with ``gate_optimizer="shared"``, move gate parameters into their
            own optimizer param group.
        gate_lr: learning rate of the gates (``None``: derived from the schedule; with
            ``"shared"``: that of the group they came from).
        gate_weight_decay: weight decay of the gate group (``"shared"`` only).
        *args: passed on to the next base class.
        **kwargs: passed on to the next base class.

    Example:
        >>> import lightning as L, torch
        >>> from torch import nn
        >>> from lightning_prune.module import PrunableMixin
        >>> class Net(PrunableMixin, L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__(target=0.3)
        ...         self.body = nn.Sequential(
        ...             nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...             nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...         )
        ...         self.fc = nn.Linear(8, 2)
        ...         self.example_input_array = torch.zeros(2, 3, 16, 16)
        ...     def forward(self, x):
        ...         return self.fc(self.body(x).mean((2, 3)))
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1, weight_decay=5e-4)
        >>> net = Net()
        >>> net.configure_model()
        >>> len(net.gates), net.gates[0].num_channels
        (2, 8)
        >>> loss = net.training_step((torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])), 0)
        >>> # the network's 10 tensors; the gates are stepped by their own optimizer
        >>> len(net.configure_optimizers().param_groups[0]["params"])
        10
    """

    pruning_setup: model_state.GateSetup
    sparsity_penalty: SparsityPenalty
    pruning_schedule: PruningSchedule
    gate_optimizer: str
    separate_gate_group: bool
    gate_lr: float | None
    gate_weight_decay: float

    def __init__(
        self,
        *args: Any,
        target: float | None = DEFAULT_TARGET,
        gate: str | None = "sigmoid",
        gate_kwargs: dict[str, Any] | None = None,
        exclude: Sequence[str] = (),
        gate_init: str | None = None,
        gate_init_spread: float = 2.0,
        penalty: SparsityPenalty | None = None,
        schedule: PruningSchedule | None = None,
        gate_optimizer: Literal["adam", "shared"] = "adam",
        separate_gate_group: bool = True,
        gate_lr: float | None = None,
        gate_weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.configure_pruning(
            target=target,
            gate=gate,
            gate_kwargs=gate_kwargs,
            exclude=exclude,
            gate_init=gate_init,
            gate_init_spread=gate_init_spread,
            penalty=penalty,
            schedule=schedule,
            gate_optimizer=gate_optimizer,
            separate_gate_group=separate_gate_group,
            gate_lr=gate_lr,
            gate_weight_decay=gate_weight_decay,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if LightningModule in mro and mro.index(LightningModule) < mro.index(PrunableMixin):
            raise TypeError(
                f"PrunableMixin must come before LightningModule in the bases of {cls.__name__}: "
                f"write `class {cls.__name__}(lp.PrunableMixin, L.LightningModule)`."
            )
        wrap_class(cls)

    def configure_pruning(
        self,
        target: float | None = DEFAULT_TARGET,
        gate: str | None = "sigmoid",
        gate_kwargs: dict[str, Any] | None = None,
        exclude: Sequence[str] = (),
        gate_init: str | None = None,
        gate_init_spread: float = 2.0,
        penalty: SparsityPenalty | None = None,
        schedule: PruningSchedule | None = None,
        gate_optimizer: Literal["adam", "shared"] = "adam",
        separate_gate_group: bool = True,
        gate_lr: float | None = None,
        gate_weight_decay: float = 0.0,
    ) -> None:
        """(Re)configure pruning; call it in ``__init__`` instead of passing ``super()`` kwargs.

        Raises:
            ValueError: for an unknown gate family (the message lists the choices), a target
                outside ``(0, 1]``, an unknown ``gate_optimizer``, or, with ``gate=None``, a
                penalty term or controller that needs gates.
            TypeError: when ``penalty`` is not a :class:`SparsityPenalty` or ``schedule`` not a
                :class:`~lightning_prune.PruningSchedule`.
        """
        if penalty is not None and not isinstance(penalty, SparsityPenalty):
            raise TypeError(
                "penalty must be a lightning_prune.penalties.SparsityPenalty, "
                f"got {type(penalty).__name__}."
            )
        if gate_lr is not None and gate_lr < 0:
            raise ValueError(f"gate_lr must be >= 0, got {gate_lr}.")
        try:
            setup = model_state.GateSetup(
                gate, dict(gate_kwargs or {}), tuple(exclude), gate_init, gate_init_spread
            )
        except KeyError as err:
            raise ValueError(str(err.args[0])) from None
        if penalty is None:
            penalty = default_penalty(target) if setup.enabled else SparsityPenalty(terms=[])
        if not setup.enabled:
            penalty.check_gateless(owner=f"{type(self).__name__}(gate=None)")
        schedule = resolve_schedule_argument(schedule, gate_lr, gate_optimizer)
        self.__dict__["pruning_setup"] = setup
        self.__dict__["sparsity_penalty"] = penalty
        self.__dict__["pruning_schedule"] = schedule
        self.__dict__["gate_optimizer"] = gate_optimizer
        self.__dict__["separate_gate_group"] = bool(separate_gate_group)
        self.__dict__["gate_lr"] = gate_lr
        self.__dict__["gate_weight_decay"] = float(gate_weight_decay)
        self.__dict__.pop("_lp_structure_learning", None)

    # ----------------------------------------------------------------------------- gates
    @property
    def gates(self) -> list[ChannelGate]:
        """The gates (empty before ``configure_model`` and after a collapse)."""
        return lp.get_gates(self)  # type: ignore[arg-type]

    def augment_gates(self) -> list[ChannelGate]:
        """Insert the gates now (what ``configure_model`` does); idempotent.

        Does nothing on a network that was already collapsed, or with ``gate=None``.

        Raises:
            ExampleInputError: when ``example_input_array`` is not set.
            NothingToPruneError: when the network has no channel group to gate.
        """
        if not self.pruning_setup.enabled:
            return []
        if lp.is_augmented(self):  # type: ignore[arg-type]
            return self.gates
        if model_state.was_collapsed(self):  # type: ignore[arg-type]
            return []
        example = model_state.example_inputs_of(self, owner="PrunableMixin")  # type: ignore[arg-type]
        return model_state.augment_module(self, example, self.pruning_setup)  # type: ignore[arg-type]

    def compute_sparsity_penalty(self, update_controller: bool = True) -> torch.Tensor:
        """The penalty now (terms logged); for manual optimization or custom loops."""
        return self._lp_structure().applier.compute(self, update_controller=update_controller)

    # ----------------------------------------------------------------------------- internals
    def _lp_structure(self) -> StructureLearning:
        structure = self.__dict__.get("_lp_structure_learning")
        require_gates = self.pruning_setup.enabled
        if structure is None or structure.penalty is not self.sparsity_penalty:
            structure = StructureLearning(
                self.sparsity_penalty,
                self.pruning_schedule,
                gate_optimizer=self.gate_optimizer,
                owner=type(self).__name__,
            )
            self.__dict__["_lp_structure_learning"] = structure
        structure.applier.require_gates = require_gates
        return structure

    def _lp_place_gate_parameters(self, configured: Any) -> None:
        """Take the gates out of the module's optimizers, or give them a group of their own."""
        params = gate_optim.gate_parameters(self)  # type: ignore[arg-type]
        if self._lp_structure().owns_gate_optimizer:
            gate_optim.remove_parameters(configured, params)
        elif self.separate_gate_group:
            gate_optim.isolate_gate_parameters(
                configured,
                self,  # type: ignore[arg-type]
                self.gate_lr,
                self.gate_weight_decay,
            )

    def _lp_add_penalty(self, output: Any) -> Any:
        if not self.automatic_optimization:  # type: ignore[attr-defined]
            return output
        if not self.pruning_setup.enabled:  # no gates: only gate-free terms (dpp_entropy)
            return self._lp_structure().applier(self, output)
        if not lp.is_augmented(self) and not model_state.was_collapsed(self):  # type: ignore[arg-type]
            raise lp.NotAugmentedError(
                f"{type(self).__name__}.training_step ran before the gates were inserted: the "
                "Trainer calls configure_model() first; outside a Trainer call "
                "`model.configure_model()` yourself."
            )
        return self._lp_structure().add_penalty(self, output)  # type: ignore[arg-type]

    def _lp_require_override(self, name: str) -> None:
        definer = _next_definer(type(self), name)
        if definer is None or definer is LightningModule:
            raise MisconfigurationException(f"No `{name}()` method defined. Lightning needs one.")

    # ------------------------------------------------------------------- hooks (wrapped below)
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the next class's ``training_step``; the penalty is added by the wrapper."""
        self._lp_require_override("training_step")
        return super().training_step(*args, **kwargs)  # type: ignore[misc]

    def configure_model(self) -> None:
        """Runs the next class's ``configure_model``, then inserts the gates."""
        parent = super()
        if hasattr(parent, "configure_model"):
            parent.configure_model()

    def configure_optimizers(self) -> Any:
        """Runs the next class's ``configure_optimizers``; gates then get their own group."""
        self._lp_require_override("configure_optimizers")
        return super().configure_optimizers()  # type: ignore[misc]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds the pruning state to the checkpoint (after the next class's hook)."""
        parent = super()
        if hasattr(parent, "on_save_checkpoint"):
            parent.on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restores structure and penalty state (before the next class's hook and the weights)."""
        parent = super()
        if hasattr(parent, "on_load_checkpoint"):
            parent.on_load_checkpoint(checkpoint)

    def on_train_end(self) -> None:
        """Runs the next class's hook, then fixes the structure if it is not fixed yet."""
        parent = super()
        if hasattr(parent, "on_train_end"):
            parent.on_train_end()

    def on_fit_start(self) -> None:
        """Runs the next class's hook, then resolves and shows the pruning schedule."""
        parent = super()
        if hasattr(parent, "on_fit_start"):
            parent.on_fit_start()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """Runs the next class's hook, then steps the gates' own optimizer."""
        parent = super()
        if hasattr(parent, "on_before_optimizer_step"):
            parent.on_before_optimizer_step(optimizer)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Runs the next class's hook, then ends the structure phase when it is due."""
        parent = super()
        if hasattr(parent, "on_train_batch_end"):
            parent.on_train_batch_end(outputs, batch, batch_idx)


wrap_class(PrunableMixin)
