"""Structure learning inside ``fit``: the shell shared by ``PrunableMixin`` and ``RelaxedPruning``.

:class:`StructureLearning` owns what turns a gated network into a pruned one during training:

* the :class:`~lightning_prune.PruningSchedule`, resolved against the Trainer when ``fit``
  starts (and shown as one table);
* the sparsity penalty, added to each ``training_step`` output with the target ramped by the
  schedule (:class:`~lightning_prune.module.step.PenaltyApplier`);
* the controller's per-step view of the gradients (the task's pull on each unit against its
  cost, :func:`unit_gradients`), from which it sets the penalty's multiplier;
* the gates' own Adam optimizer (:class:`GateOptimizer`), stepped next to the module's
  optimizers, so that gates learn at a rate derived from the run's length whatever optimizer
  and learning rate the project uses (with SGD at a usual learning rate, gate logits barely
  move in a short run);
* the end of the structure phase: the controller's budget snap, the *snap share* (the share of
  units whose keep/drop state the gates did not decide themselves) and freezing the gates at
  their hard masks, so the final phase trains exactly the structure that is saved.

Callbacks read what it leaves on the model (:func:`~lightning_prune.module.state.schedule_of`,
:func:`~lightning_prune.module.state.structure_outcome`); they never talk to it directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

import lightning_prune as lp
from lightning_prune.gates import ChannelGate
from lightning_prune.module import companions
from lightning_prune.module import state as model_state
from lightning_prune.module.optim import gate_parameters
from lightning_prune.module.step import PenaltyApplier, attached_trainer
from lightning_prune.penalties import SparsityPenalty
from lightning_prune.profiling import format_table
from lightning_prune.schedule import PruningSchedule, ResolvedSchedule
from lightning_prune.surgery.gating import reattach_sites

__all__ = [
    "GATE_OPTIMIZERS",
    "GateOptimizer",
    "StructureLearning",
    "resolve_schedule_argument",
    "unit_gradients",
]

#: Who trains the gates: their own Adam optimizer, or the module's optimizers.
GATE_OPTIMIZERS = ("adam", "shared")


def resolve_schedule_argument(
    schedule: PruningSchedule | Mapping[str, Any] | None,
    gate_lr: float | None = None,
    gate_optimizer: str = "adam",
) -> PruningSchedule:
    """The :class:`~lightning_prune.PruningSchedule` an entry point was given.

    Accepts ``None`` (the defaults) or a mapping of its fields (YAML); with the gates' own
    optimizer a ``gate_lr`` given next to it sets the schedule's ``gate_lr``.

    Raises:
        ValueError: for an unknown ``gate_optimizer`` or unknown schedule fields.
        TypeError: for anything else than a schedule, a mapping or ``None``.
    """
    if gate_optimizer not in GATE_OPTIMIZERS:
        raise ValueError(
            f"gate_optimizer must be 'adam' (the gates' own optimizer) or 'shared' (the "
            f"module's optimizer), got {gate_optimizer!r}."
        )
    if schedule is None:
        schedule = PruningSchedule()
    elif isinstance(schedule, Mapping):
        fields = {f.name for f in dataclasses.fields(PruningSchedule)}
        unknown = sorted(set(schedule) - fields)
        if unknown:
            raise ValueError(
                f"Unknown PruningSchedule field(s) {unknown}; valid fields: {sorted(fields)}."
            )
        schedule = PruningSchedule(**dict(schedule))
    elif not isinstance(schedule, PruningSchedule):
        raise TypeError(
            f"schedule must be a lightning_prune.PruningSchedule, got {type(schedule).__name__}."
        )
    if gate_lr is not None and gate_optimizer == "adam" and schedule.gate_lr is None:
        schedule = dataclasses.replace(schedule, gate_lr=gate_lr)
    return schedule


def _grad_scaler(trainer: Any) -> Any:
    """The precision plugin's ``GradScaler`` (16-bit mixed precision), if any."""
    plugin = getattr(trainer, "precision_plugin", None)
    return getattr(plugin, "scaler", None)


def _loss_scale(trainer: Any) -> float:
    scaler = _grad_scaler(trainer)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    return 1.0


def _reducer(trainer: Any) -> Any:
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    return lambda tensor: strategy.reduce(tensor, reduce_op="mean")


def unit_gradients(
    model: nn.Module, kind: str = "flops", scale: float = 1.0, reduce: Any = None
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Per gate: the task's pull on each unit and the unit's price in cost ratio.

    The pull is minus the loss gradient on the gate's *values* (what multiplies the channels),
    accumulated by the gates since the last call (:meth:`ChannelGate.pop_value_grad`): the
    first-order effect of closing the unit, defined whether or not the gate is saturated or its
    sample clamped. The price is the cost ratio's gradient on the keep-probabilities.

    Args:
        model: the augmented model.
        kind: ``"flops"`` or ``"params"``.
        scale: divide the pulls by this (the loss scale under 16-bit mixed precision).
        reduce: ``fn(tensor) -> tensor`` averaging a pull across processes (DDP), or ``None``.

    Returns:
        ``(pulls, prices)``, one entry per gate in the order of
        :func:`lightning_prune.get_gates` (``None`` where a gate saw no gradient).
    """
    gates = lp.get_gates(model)
    probs = [g.probabilities().detach().requires_grad_(True) for g in gates]
    with torch.enable_grad():
        ratio = lp.relaxed_cost(model, kind=kind, values=probs) / lp.dense_cost(model, kind=kind)
        prices = torch.autograd.grad(ratio, probs, allow_unused=True)
    pulls: list[torch.Tensor | None] = []
    for gate in gates:
        grad = gate.pop_value_grad()
        if grad is not None:
            grad = -grad / scale
            if reduce is not None:
                grad = reduce(grad)
        pulls.append(grad)
    return pulls, [None if p is None else p.detach() for p in prices]


class GateOptimizer:
    """Adam over the gate parameters, stepped right before the module's optimizer.

    Gradients are unscaled first under 16-bit mixed precision (and the step skipped when they
    are not finite, as ``GradScaler`` does), then cleared after the step (the module's
    optimizers do not hold the gates, so they would not clear them).

    Args:
        params: the gates' parameters.
        lr: learning rate.
    """

    def __init__(
        self, params: list[nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        self.params = list(params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas)

    def matches(self, params: list[nn.Parameter]) -> bool:
        """Whether it steps exactly ``params`` (re-inserted gates have new parameters)."""
        return [id(p) for p in params] == [id(p) for p in self.params]

    def grads(self, trainer: Any) -> list[torch.Tensor] | None:
        """The unscaled gradients (zeros where missing), or ``None`` when one is not finite."""
        scaler = _grad_scaler(trainer)
        inverse = 1.0
        if scaler is not None and scaler.is_enabled():
            inverse = 1.0 / float(scaler.get_scale())
        grads = []
        for p in self.params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if inverse != 1.0:
                g = g * inverse
            if not bool(torch.isfinite(g).all()):
                return None
            grads.append(g)
        return grads

    def step(self, grads: list[torch.Tensor]) -> None:
        """One Adam step with ``grads``, then clear the gradients."""
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        self.zero_grad()

    def zero_grad(self) -> None:
        """Clear the gates' gradients."""
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """Adam's state (moments), for checkpoints."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore Adam's state (skipped when the parameter shapes changed)."""
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, RuntimeError, KeyError):
            rank_zero_warn("lightning_prune: the gate optimizer state did not match; restarted.")


class StructureLearning:
    """The structure phase of a pruning run, and its hand-over to the final phase.

    Args:
        penalty: the sparsity penalty.
        schedule: the phase split and derived settings.
        gate_optimizer: ``"adam"`` (default): the gates get their own Adam optimizer at the
            schedule's learning rate and are removed from the module's optimizers;
            ``"shared"``: the module's own optimizer trains them (in a group of their own).
        owner: name used in messages.
    """

    def __init__(
        self,
        penalty: SparsityPenalty,
        schedule: PruningSchedule | None = None,
        gate_optimizer: str = "adam",
        owner: str = "lightning_prune",
    ) -> None:
        if gate_optimizer not in GATE_OPTIMIZERS:
            raise ValueError(
                f"gate_optimizer must be 'adam' (the gates' own optimizer) or 'shared' (the "
                f"module's optimizer), got {gate_optimizer!r}."
            )
        self.penalty = penalty
        self.schedule = schedule if schedule is not None else PruningSchedule()
        self.gate_optimizer = gate_optimizer
        self.owner = owner
        self.applier = PenaltyApplier(penalty)
        self.resolved: ResolvedSchedule | None = None
        self.finished = False
        self.outcome: dict[str, Any] | None = None
        self._optimizer: GateOptimizer | None = None
        self._optimizer_state: dict[str, Any] | None = None
        self._stepped_at: int | None = None

    @property
    def owns_gate_optimizer(self) -> bool:
        """Whether gates are trained by :class:`GateOptimizer` (not the module's optimizers)."""
        return self.gate_optimizer == "adam"

    # ------------------------------------------------------------------------------ start
    def start(self, trainer: Any, module: nn.Module) -> None:
        """Resolve the schedule for this run, configure the controller, show the table."""
        if not lp.is_augmented(module):
            return
        if reattach_sites(module):
            rank_zero_info(
                f"{self.owner}: gated layers were replaced after the gates went in (e.g. "
                "`sync_batchnorm=True`); their gates act through forward hooks now."
            )
        gates = lp.get_gates(module)
        if not module.training and not self.finished:
            rank_zero_warn(
                f"{self.owner}: {type(module).__name__} is in eval mode as `fit` starts (Lightning "
                "keeps the mode it is given). Its gates are switched to training mode so they can "
                "learn; call `model.train()` before `fit` if the rest should train too."
            )
            for gate in gates:
                gate.train()
        controller = self.penalty.controller
        for gate in gates:
            gate.track_value_grads = controller is not None and controller.wants_observations
            gate.value_grad = None
        span = float(type(gates[0]).decision_span)
        total = trainer.estimated_stepping_batches
        if total == 0:  # a fit without training steps (e.g. to collapse set masks): no schedule
            self.resolved = None
            return
        try:
            self.resolved = self.schedule.resolve(total, span)
        except ValueError as err:
            raise ValueError(f"{self.owner}: {err}") from None
        self.applier.schedule = self.resolved
        if controller is not None:
            controller.configure(self.resolved.structure_steps)
        model_state.set_schedule(module, self.resolved)
        if self.finished:  # resumed in the final phase with frozen gates
            for gate in gates:
                gate.freeze()
            return
        collapses = _collapses(trainer)
        if collapses and self.resolved.final_phase == "collapse":
            companions.check_averaging_start(
                trainer, self.resolved.structure_steps, self.resolved.total_steps
            )
        reseeded = companions.reseed_averaging(trainer, module)
        if reseeded:
            rank_zero_info(
                f"{self.owner}: {', '.join(reseeded)} now averages the gated network (its copy "
                "was made before the gates were inserted)."
            )
        target = controller.target if controller is not None else None
        temperature = _temperature_text(gates[0])
        rows = self.resolved.rows(target, temperature, collapses=collapses)
        rank_zero_info(
            f"{self.owner}: pruning schedule ({self.resolved.total_steps} optimizer steps)\n"
            + format_table(rows)
        )

    # ---------------------------------------------------------------------------- penalty
    def add_penalty(self, module: nn.Module, output: Any) -> Any:
        """``output`` plus the penalty (unchanged once the structure is fixed)."""
        if self.finished or not self.applier.applies_to(module):
            return output
        controller = self.penalty.controller
        trainer = attached_trainer(module)
        if controller is not None and self.resolved is not None and trainer is not None:
            controller.current_target = self.resolved.aim_at(
                int(trainer.global_step), controller.target
            )
        return self.applier(module, output)

    # ------------------------------------------------------------------------------ gates
    def before_optimizer_step(self, trainer: Any, module: nn.Module) -> None:
        """Calibrate the controller (first step) and step the gates' own optimizer."""
        if self.finished or not lp.is_augmented(module):
            return
        step = int(getattr(trainer, "global_step", 0))
        if step == self._stepped_at:  # several optimizers (manual optimization): once a step
            return
        self._stepped_at = step
        params = [p for p in gate_parameters(module) if p.requires_grad]
        if not params:
            return
        optimizer = self._gates_optimizer(params)
        # the module's optimizers hold the gates in "shared" mode: their gradients were
        # unscaled with them before this hook
        grads = optimizer.grads(trainer if self.owns_gate_optimizer else None)
        if grads is None:  # overflow under mixed precision: skip, as GradScaler does
            if self.owns_gate_optimizer:
                optimizer.zero_grad()
            return
        controller = self.penalty.controller
        if controller is not None and controller.wants_observations:
            pulls, prices = unit_gradients(
                module, controller.kind, _loss_scale(trainer), _reducer(trainer)
            )
            controller.observe(module, pulls, prices)
        if self.owns_gate_optimizer:
            optimizer.step(grads)
        reach = self.resolved.gate_reach if self.resolved is not None else None
        if reach:
            for gate in lp.get_gates(module):
                gate.keep_within_reach(reach * gate.decision_span)

    def _gates_optimizer(self, params: list[nn.Parameter]) -> GateOptimizer:
        lr = self.resolved.gate_lr if self.resolved is not None else 1e-2
        if self._optimizer is None or not self._optimizer.matches(params):
            self._optimizer = GateOptimizer(params, lr)
            if self._optimizer_state is not None:
                self._optimizer.load_state_dict(self._optimizer_state)
                self._optimizer_state = None
        return self._optimizer

    # -------------------------------------------------------------------------------- end
    def after_batch(self, trainer: Any, module: nn.Module) -> None:
        """End the structure phase once the schedule says so."""
        if self.finished or self.resolved is None or not lp.is_augmented(module):
            return
        if int(trainer.global_step) >= self.resolved.structure_steps:
            self.finish(trainer, module)
        else:  # the metric worsens by design while capacity goes: no early stop before the end
            companions.hold_early_stopping(trainer)

    def on_train_end(self, trainer: Any, module: nn.Module) -> None:
        """Fix the structure if training ended inside the structure phase.

        A fit that took no optimizer step leaves the gates as they are.
        """
        if not self.finished and self.resolved is not None and lp.is_augmented(module):
            self.finish(trainer, module)

    def finish(self, trainer: Any, module: nn.Module) -> dict[str, Any]:
        """Snap to the budget, measure the snap share, freeze the gates.

        Returns:
            The outcome (also stored on the model for reports and logged).
        """
        tolerance = self.resolved.decided_tolerance if self.resolved is not None else 0.05
        limit = self.resolved.max_snap_share if self.resolved is not None else 0.05
        gates = lp.get_gates(module)
        with torch.no_grad():
            decided = [g.decided(tolerance).cpu() for g in gates]
            before = [g.hard_mask().cpu() for g in gates]
        dense = lp.dense_cost(module)
        with torch.no_grad():
            relaxed_before = float(lp.relaxed_cost(module)) / dense if dense else 1.0
        hard_before = float(lp.hard_cost(module)) / dense if dense else 1.0
        controller = self.penalty.controller
        if controller is not None:
            controller.current_target = controller.target
        snapped = self.penalty.finish(module)
        with torch.no_grad():
            after = [g.hard_mask().cpu() for g in gates]
        units = sum(int(m.numel()) for m in after)
        flipped = sum(int((a != b).sum()) for a, b in zip(after, before))
        by_snap = sum(int(((~d) | (a != b)).sum()) for d, a, b in zip(decided, after, before))
        undecided = sum(int((~d).sum()) for d in decided)
        for gate in gates:
            gate.freeze()
        self.outcome = {
            "step": int(getattr(trainer, "global_step", 0)),
            "units": units,
            "kept_units": sum(int(m.sum()) for m in after),
            "undecided_units": undecided,
            "snapped_units": flipped,
            "snap_share": by_snap / units if units else 0.0,
            "max_snap_share": limit,
            "relaxed_flops_ratio_before_snap": relaxed_before,
            "flops_ratio_before_snap": hard_before,
            "flops_ratio": float(lp.hard_cost(module)) / dense if dense else 1.0,
            "target": controller.target if controller is not None else None,
        }
        self.finished = True
        model_state.set_structure_outcome(module, self.outcome)
        for logger in getattr(trainer, "loggers", []) or []:
            logger.log_metrics(
                {
                    "prune/snap_share": self.outcome["snap_share"],
                    "prune/structure_flops_ratio": self.outcome["flops_ratio"],
                },
                step=self.outcome["step"],
            )
        message = (
            f"{self.owner}: structure fixed at step {self.outcome['step']}: "
            f"{self.outcome['kept_units']}/{units} units kept, FLOPs ratio "
            f"{self.outcome['flops_ratio']:.3f}; {by_snap} units ({self.outcome['snap_share']:.1%})"
            f" decided by the snap/threshold ({undecided} undecided, {snapped} flipped)."
        )
        if self.outcome["snap_share"] > limit:
            rank_zero_warn(
                message + f" That is more than {limit:.0%}: the gates did not settle on their own; "
                "give the structure phase more steps (longer training or "
                "PruningSchedule(structure=...)) or a larger gate learning rate."
            )
        else:
            rank_zero_info(message)
        restarted = companions.restart_tracking(trainer)
        if restarted:
            rank_zero_info(
                f"{self.owner}: {', '.join(restarted)} restarted: scores from before step "
                f"{self.outcome['step']} describe the unpruned network (its checkpoints stay on "
                "disk, no longer tracked)."
            )
        return self.outcome

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain data for checkpoints: phase, outcome, penalty and the gate optimizer."""
        return {
            "finished": self.finished,
            "outcome": self.outcome,
            "penalty": self.penalty.state_dict(),
            "gate_optimizer": self._optimizer.state_dict() if self._optimizer else None,
        }

    def load_state_dict(self, state: dict[str, Any], module: nn.Module | None = None) -> None:
        """Restore :meth:`state_dict`'s output (the gate optimizer once its gates exist)."""
        self.finished = bool(state.get("finished", False))
        self.outcome = state.get("outcome")
        if state.get("penalty"):
            self.penalty.load_state_dict(state["penalty"])
        self._optimizer_state = state.get("gate_optimizer")
        self._optimizer = None
        if module is not None and self.outcome is not None:
            model_state.set_structure_outcome(module, self.outcome)


def _temperature_text(gate: ChannelGate) -> str | None:
    start, end = type(gate).default_temperature_range
    if start == end:
        return None
    return f"gate temperature {start:g} -> {end:g} (TemperatureAnnealing)"


def _collapses(trainer: Any) -> bool:
    """Whether a callback of ``trainer`` (or one it holds) collapses the network during fit."""
    stack = list(getattr(trainer, "callbacks", None) or [])
    while stack:
        callback = stack.pop()
        if getattr(callback, "collapses_network", False):
            return True
        held = getattr(callback, "callbacks", None)
        if isinstance(held, dict):
            stack.extend(held.values())
    return False
