"""The pruning schedule: when gates learn, how fast, and when the structure becomes final.

A run of ``T`` optimizer steps is split into two phases:

1. **structure** (the first ``structure * T`` steps): gates learn which channels to keep. The
   FLOPs target ramps from 1 (nothing pruned) down to the user's target over the first
   ``ramp`` of the phase (cubic: fast first, gentle at the end, as in gradual pruning), so the
   network adapts while channels close; the rest of the phase holds the target while the
   temperature anneal makes the gates binary (the temperature stays at its start value during
   the ramp: a sigmoid gate annealed early saturates, and its gradient vanishes, before the
   target asks it to close).
2. **final** (the remaining steps): the gates are frozen at their hard masks (and, with a
   :class:`~lightning_prune.callbacks.NetworkCollapse` callback, the network is collapsed and
   the optimizers rebuilt); training continues on exactly the structure that is saved.

Everything else is derived from the run's length, so that the same defaults work for 2 epochs
and for 300, from scratch and from a trained model: the gates' learning rate (a gate can cross
its family's :attr:`~lightning_prune.gates.ChannelGate.decision_span` in ``gate_travel`` of the
structure phase) and the controller's integral gain
(:meth:`~lightning_prune.controller.TargetController.configure`).

:class:`PruningSchedule` holds the (YAML-friendly) settings; :meth:`PruningSchedule.resolve`
turns them into a :class:`ResolvedSchedule` of step numbers for one run. Both are plain data;
nothing here imports Lightning.

Example:
    >>> plan = PruningSchedule().resolve(total_steps=1000, decision_span=2.0)
    >>> plan.structure_steps, plan.ramp_steps, round(plan.gate_lr, 4)
    (500, 300, 0.016)
    >>> [round(plan.target_at(s, 0.25), 3) for s in (0, 150, 300, 900)]
    [1.0, 0.344, 0.25, 0.25]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["FINAL_PHASES", "PruningSchedule", "ResolvedSchedule", "target_ramp"]

#: What happens to the gates when the structure phase ends.
FINAL_PHASES = ("collapse", "freeze")
FinalPhase = Literal["collapse", "freeze"]


def target_ramp(progress: float, target: float) -> float:
    """The target ratio at ``progress`` in ``[0, 1]`` of the ramp: cubic from 1 to ``target``.

    ``target + (1 - target) * (1 - p) ** 3``: most of the pruning happens early, while the
    learning rate is high, and the last channels close slowly.

    Example:
        >>> [round(target_ramp(p, 0.5), 4) for p in (0.0, 0.5, 1.0)]
        [1.0, 0.5625, 0.5]
    """
    p = min(max(float(progress), 0.0), 1.0)
    return float(target) + (1.0 - float(target)) * (1.0 - p) ** 3


@dataclass(frozen=True)
class ResolvedSchedule:
    """A :class:`PruningSchedule` resolved for one run (all numbers are optimizer steps).

    Attributes:
        total_steps: optimizer steps of the whole ``fit``.
        structure_steps: steps of the structure phase (gates learn); the final phase follows.
        ramp_steps: steps over which the target ramps from 1 to its final value.
        gate_lr: learning rate of the gates' own Adam optimizer.
        lead_steps: how far ahead of the ramp the controller aims: a gate needs about this
            many steps to cross its threshold (half its travel), so aiming at the target of
            ``step + lead_steps`` keeps the measured ratio on the ramp instead of behind it.
        final_phase: ``"collapse"`` or ``"freeze"``.
        decided_tolerance: a unit whose keep-probability lies within this of 0 or 1 when the
            structure phase ends was decided by its gate.
        max_snap_share: share of units decided by the snap / threshold above which a warning
            is given.
        gate_reach: after every gate step, each unit's decision logit is kept within this many
            decision spans of the threshold (``None``: unbounded).
    """

    total_steps: int
    structure_steps: int
    ramp_steps: int
    gate_lr: float
    lead_steps: int = 0
    final_phase: FinalPhase = "collapse"
    decided_tolerance: float = 0.05
    max_snap_share: float = 0.05
    gate_reach: float | None = 2.0

    def target_at(self, step: int, target: float) -> float:
        """The ramp's target ratio at ``step`` (1 at step 0, ``target`` from ``ramp_steps``)."""
        if self.ramp_steps <= 0:
            return float(target)
        return target_ramp(step / self.ramp_steps, target)

    def aim_at(self, step: int, target: float) -> float:
        """What the controller aims at on ``step``: the ramp ``lead_steps`` ahead."""
        return self.target_at(step + self.lead_steps, target)

    def anneal_progress(self, step: int) -> float:
        """Fraction of the temperature anneal done at ``step``.

        The anneal runs over the second half of the settle phase (from halfway between the
        ramp's end and the structure phase's end to the latter; a switch when they coincide):
        the first half leaves the gates mobile while the controller settles on the target.
        """
        ramp_end = min(self.ramp_steps, self.structure_steps)
        begin = (ramp_end + self.structure_steps) // 2
        if self.structure_steps <= begin:
            return 1.0 if step >= self.structure_steps else 0.0
        return min(max((step - begin) / (self.structure_steps - begin), 0.0), 1.0)

    def structure_progress(self, step: int) -> float:
        """Fraction of the structure phase done at ``step`` (drives temperatures and ramps)."""
        if self.structure_steps <= 0:
            return 1.0
        return min(max(step / self.structure_steps, 0.0), 1.0)

    def in_structure_phase(self, step: int) -> bool:
        """Whether gates still learn at ``step``."""
        return step < self.structure_steps

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and ``summary.json``)."""
        return asdict(self)

    def rows(
        self, target: float | None, temperature: str | None = None, collapses: bool = True
    ) -> list[dict[str, Any]]:
        """One row per phase, for the table printed at the start of ``fit``.

        Args:
            target: the FLOPs target (``None``: penalty terms only).
            temperature: the temperature row's text (``None``: no row).
            collapses: whether a :class:`~lightning_prune.callbacks.NetworkCollapse` callback
                takes part in the fit (without one the frozen gated network trains on).
        """
        ramp_end = min(self.ramp_steps, self.structure_steps)
        rows: list[dict[str, Any]] = []
        goal = f"{target:.0%} of the dense FLOPs" if target is not None else "penalty terms"
        if ramp_end > 0:
            rows.append(
                {
                    "phase": "structure: ramp",
                    "steps": f"0-{ramp_end}",
                    "what happens": f"target ramps 100% -> {goal} (cubic); gates learn",
                }
            )
        if self.structure_steps > ramp_end:
            rows.append(
                {
                    "phase": "structure: settle",
                    "steps": f"{ramp_end}-{self.structure_steps}",
                    "what happens": f"target held at {goal}; gates turn binary",
                }
            )
        if temperature:
            rows.append(
                {
                    "phase": "temperature",
                    "steps": f"{(ramp_end + self.structure_steps) // 2}-{self.structure_steps}",
                    "what happens": temperature,
                }
            )
        final = "gates frozen at their hard masks; training continues on the final structure"
        if self.final_phase == "collapse" and collapses:
            final = (
                "gates frozen at their hard masks, network collapsed, optimizer rebuilt; "
                "training continues on the final structure"
            )
        elif self.final_phase == "collapse":
            final += (
                " (no NetworkCollapse callback: the gated network computes what the compact one"
                " would; `lightning_prune.collapse` it after fit)"
            )
        if self.total_steps > self.structure_steps:
            rows.append(
                {
                    "phase": "final",
                    "steps": f"{self.structure_steps}-{self.total_steps}",
                    "what happens": final,
                }
            )
        else:
            rows.append(
                {
                    "phase": "final",
                    "steps": "(none)",
                    "what happens": "structure fixed when training ends (no final phase)",
                }
            )
        rows.append(
            {
                "phase": "gates",
                "steps": "",
                "what happens": f"own Adam optimizer, lr {self.gate_lr:.3g}",
            }
        )
        return rows


@dataclass
class PruningSchedule:
    """How a pruning run is split into phases, as fractions of the run.

    Every field has a default that works on its own; a user gives a target and nothing else.

    Args:
        structure: fraction of the optimizer steps during which gates learn (the structure
            phase); the rest trains the final structure. ``1.0`` fixes the structure only when
            training ends (no final phase).
        ramp: fraction of the structure phase over which the target ramps from 1 to its final
            value; the rest of the phase holds it while gates turn binary.
        final_phase: ``"collapse"``: when the structure phase ends the gates are frozen and a
            :class:`~lightning_prune.callbacks.NetworkCollapse` callback (part of
            :class:`~lightning_prune.callbacks.RelaxedPruning`) collapses the network and
            rebuilds the optimizers; without that callback the gates stay frozen, which
            computes the same. ``"freeze"``: freeze only, collapse when ``fit`` ends.
        gate_lr: learning rate of the gates' Adam optimizer (``None``: derived, so that a gate
            crosses its family's ``decision_span`` in ``gate_travel`` of the structure phase).
        gate_travel: see ``gate_lr``.
        decided_tolerance: when the structure phase ends, a unit whose keep-probability lies
            within this of 0 or 1 counts as decided by its gate; others (and units flipped by
            the controller's budget snap) count as decided by the snap.
        max_snap_share: warn when more than this share of the units was decided by the snap.
        gate_reach: during the structure phase, each unit's decision logit (at its family's
            starting temperature) is kept within this many ``decision_span`` of the threshold:
            a gate pushed deep into saturation has a vanishing gradient and could no longer
            follow the budget within the phase (measured: 16-step phases left 5-9% of the units
            to the snap without it, none with it). Annealing still makes the gates binary.
            ``None`` leaves the parameters unbounded (needed for paper 1's staged pruning,
            ``NetworkCollapse(stages=..., thresholds=...)``, with thresholds below the band:
            ``sigmoid(-4) = 0.018`` for sigmoid gates before the temperature anneals).

    Raises:
        ValueError: for fractions outside their range or an unknown ``final_phase``.

    Example:
        >>> PruningSchedule(structure=0.6).resolve(total_steps=20).structure_steps
        12
    """

    structure: float = 0.5
    ramp: float = 0.6
    final_phase: FinalPhase = "collapse"
    gate_lr: float | None = None
    gate_travel: float = 0.25
    decided_tolerance: float = 0.05
    max_snap_share: float = 0.05
    gate_reach: float | None = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.structure <= 1.0:
            raise ValueError(
                f"structure is the fraction of training during which gates learn, in (0, 1]; got "
                f"{self.structure}."
            )
        if not 0.0 <= self.ramp <= 1.0:
            raise ValueError(
                f"ramp is a fraction of the structure phase in [0, 1]; got {self.ramp}."
            )
        if self.final_phase not in FINAL_PHASES:
            raise ValueError(
                f"final_phase must be one of {', '.join(map(repr, FINAL_PHASES))}; got "
                f"{self.final_phase!r}."
            )
        if self.gate_lr is not None and not self.gate_lr > 0:
            raise ValueError(f"gate_lr must be positive (or None: derived); got {self.gate_lr}.")
        if not 0.0 < self.gate_travel <= 1.0:
            raise ValueError(f"gate_travel must lie in (0, 1]; got {self.gate_travel}.")
        if not 0.0 < self.decided_tolerance < 0.5:
            raise ValueError(
                f"decided_tolerance must lie in (0, 0.5); got {self.decided_tolerance}."
            )
        if not 0.0 <= self.max_snap_share <= 1.0:
            raise ValueError(f"max_snap_share must lie in [0, 1]; got {self.max_snap_share}.")
        if self.gate_reach is not None and not self.gate_reach > 0:
            raise ValueError(
                f"gate_reach must be positive (or None: unbounded); got {self.gate_reach}."
            )

    def resolve(self, total_steps: float, decision_span: float = 2.0) -> ResolvedSchedule:
        """Step numbers for a run of ``total_steps`` optimizer steps.

        Args:
            total_steps: ``trainer.estimated_stepping_batches``.
            decision_span: the gate family's
                :attr:`~lightning_prune.gates.ChannelGate.decision_span`.

        Raises:
            ValueError: when ``total_steps`` is not a positive finite number.
        """
        if not (math.isfinite(total_steps) and total_steps >= 1):
            raise ValueError(
                "The pruning schedule is derived from the run's length, but the Trainer's number "
                f"of optimizer steps is {total_steps}: set `max_steps` (or `max_epochs`, with a "
                "training dataloader of known length or an integer `limit_train_batches`)."
            )
        total = int(total_steps)
        structure = max(1, min(total, round(self.structure * total)))
        ramp = round(self.ramp * structure)
        gate_lr = self.gate_lr
        if gate_lr is None:
            gate_lr = float(decision_span) / max(self.gate_travel * structure, 1.0)
        return ResolvedSchedule(
            total_steps=total,
            structure_steps=structure,
            ramp_steps=ramp,
            gate_lr=float(gate_lr),
            lead_steps=round(0.5 * self.gate_travel * structure),
            final_phase=self.final_phase,
            decided_tolerance=self.decided_tolerance,
            max_snap_share=self.max_snap_share,
            gate_reach=self.gate_reach,
        )
