"""The default FLOPs / parameter target: a knapsack of unit importances, one multiplier per unit.

A single Lagrange multiplier on ``ratio - target`` (paper 1's structure loss, a PI controller)
pushes every unit with the same force per unit of cost. How far that moves a gate depends on
the scale and the noise of the task's gradient on it, which differ by orders of magnitude
between networks, between a fresh and a trained network, and over training; tuned for one run
it does nothing (or prunes everything) in another.

:class:`AdaptiveController` instead reads the task's pull on every unit from the gradients
(the loss gradient on the gate's value: the first-order loss of closing the unit, measured on
the relaxed network while it trains) and, on every step:

1. ranks units by *importance per cost*: the pull's root mean square over recent mini-batches
   (Molchanov et al. 2019's squared Taylor criterion; the mean pull alone is noise at a trained
   network) divided by the unit's price (the cost ratio's gradient on its keep-probability);
2. solves the knapsack: the most important units whose relaxed cost fits the current target
   stay (:func:`keep_set`, a bisection on the exact cost model); the others should close.
   Within each group, the units' weights (as a group: filters, norm scales, consumers' input
   channels) also order the knapsack, strongly at the start of the structure phase and not at
   its end (see ``within_group``): the weights tell which units of a layer carry the trained
   function, where a few hundred noisy pulls do not;
3. gives each unit its own multiplier, just strong enough to beat the task's pull on it by
   ``margin`` times the pull's noise: towards closing for units outside the keep set, towards
   opening for units inside it that are not yet decidedly open, zero for the rest.

Every group keeps a floor of its units (``floor`` times the share a uniform pruning would keep):
the importances are first-order and additive, so on their own they let a layer empty out
whose last channels the task cannot do without.

The penalty is ``sum_i lambda_i * p_i`` over keep-probabilities ``p_i``; the gates (with their
own Adam optimizer) then move to the knapsack's answer at a speed set by the schedule, the
ranking keeps learning as the network adapts (a unit whose importance rises re-enters the keep
set and re-opens), and the gates end the structure phase decided, on the budget. Like
ChipNet's continuous knapsack (Tiwari et al. 2021), but the importances are the relaxed
gates' own gradient statistics and the knapsack is re-solved every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from lightning_prune._registry import Registry
from lightning_prune.controller import CONTROLLERS, CostKind, Measure, TargetController

__all__ = [
    "MIN_SMOOTHING_STEPS",
    "PULL_IMPORTANCES",
    "WITHIN_GROUP_ORDERS",
    "AdaptiveController",
    "keep_set",
    "taylor",
    "taylor_squared",
]

#: Fewest steps the importance estimates average over (their noise needs a few samples).
MIN_SMOOTHING_STEPS = 4.0

#: A unit's importance from its smoothed pull statistics ``(mean, square)``: the moving
#: averages of the pull (the first-order loss of closing the unit) and of its square.
PullImportance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: How :class:`AdaptiveController` reads a unit's importance from its pull statistics.
PULL_IMPORTANCES: Registry[PullImportance] = Registry("pull importance")


@PULL_IMPORTANCES.register("taylor_squared")
def taylor_squared(mean: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
    """Root mean square of the pull over mini-batches (Molchanov et al. 2019's squared Taylor).

    At a trained network the mean pull of every unit is near zero (the loss sits at a minimum)
    and its sign is noise; the pull's spread over mini-batches still measures how much the loss
    depends on the unit (it estimates the Fisher information, the curvature of closing it). Far
    from a minimum the mean dominates, and this orders units as :func:`taylor` does.
    """
    return square.clamp(min=0.0).sqrt()


@PULL_IMPORTANCES.register("taylor")
def taylor(mean: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
    """The mean pull: the first-order loss of closing the unit (noise at a trained network)."""
    return mean


#: ``order(model) -> per gate, one score per unit (or None)``: the units' within-group rank by
#: these scores joins their knapsack keys (``None`` for a gate: its keys stay as they are).
WithinGroupOrder = Callable[[torch.nn.Module], "list[torch.Tensor | None]"]

#: How :class:`AdaptiveController` orders units within their group (see ``within_group``).
WITHIN_GROUP_ORDERS: Registry[WithinGroupOrder] = Registry("within-group order")


@WITHIN_GROUP_ORDERS.register("weights")
def weights_order(model: torch.nn.Module) -> list[torch.Tensor | None]:
    """The units' weights as a group (:func:`lightning_prune.surgery.weight_importance`)."""
    from lightning_prune.surgery.importance import weight_importance

    return weight_importance(model, p=1)


@WITHIN_GROUP_ORDERS.register("knapsack")
def knapsack_order(model: torch.nn.Module) -> list[torch.Tensor | None]:
    """No within-group term: the gates' positions and the task's pull alone."""
    import lightning_prune as lp

    return [None] * len(lp.get_gates(model))


def keep_set(
    model: torch.nn.Module,
    keys: list[torch.Tensor | None],
    target: float,
    kind: CostKind = "flops",
    min_keep: float = 0.0,
) -> list[torch.Tensor]:
    """The units with the highest ``keys`` whose relaxed cost ratio fits ``target``.

    Gates without keys (``None``) are kept whole, and each gate's ``round(min_keep * n)``
    highest-keyed units are always kept (a floor per group), unless the floors alone cost more
    than ``target``: the floor is then lowered to the largest share with which the target is
    reached (the target wins). The relaxed cost is evaluated at
    the 0/1 values of each candidate set (the exact, bilinear cost model of
    :func:`lightning_prune.relaxed_cost`), and the threshold on the keys is found by bisection
    over their sorted values.

    Returns:
        One boolean mask per gate (``True``: keep).

    Example:
        >>> import torch, lightning_prune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        >>> _ = lp.augment(net, torch.zeros(1, 3, 8, 8))
        >>> keep_set(net, [torch.tensor([1.0, 4.0, 3.0, 2.0])], 0.5)[0].tolist()
        [False, True, True, False]
    """
    import lightning_prune as lp

    gates = lp.get_gates(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dense = float(lp.dense_cost(model, kind=kind))

    def masks_at(ranked: list[torch.Tensor | None], threshold: float) -> list[torch.Tensor]:
        return [
            torch.ones(g.num_channels, dtype=torch.bool) if k is None else k.cpu() > threshold
            for g, k in zip(gates, ranked)
        ]

    def ratio(ranked: list[torch.Tensor | None], threshold: float) -> float:
        values = [m.to(device=device, dtype=torch.float32) for m in masks_at(ranked, threshold)]
        return float(lp.relaxed_cost(model, kind=kind, values=values)) / dense

    if not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"min_keep is a share of each group's units in [0, 1], got {min_keep}.")

    def solve(floor: float) -> tuple[list[torch.Tensor], float]:
        floored = (
            keys if floor <= 0.0 else [None if k is None else _with_floor(k, floor) for k in keys]
        )
        known = [k.flatten().cpu() for k in floored if k is not None]
        known = [k[torch.isfinite(k)] for k in known]  # floored units are not candidates
        if not any(k.numel() for k in known):  # no keys, or every unit under the floor
            return masks_at(floored, -math.inf), ratio(floored, -math.inf)
        candidates = torch.unique(torch.cat(known))
        below = torch.cat([candidates[:1] - 1.0, candidates])  # "keep everything" first
        low, high = 0, len(below) - 1
        while low < high:  # the lowest threshold (most units kept) whose ratio fits the target
            mid = (low + high) // 2
            if ratio(floored, float(below[mid])) <= target:
                high = mid
            else:
                low = mid + 1
        return masks_at(floored, float(below[low])), ratio(floored, float(below[low]))

    masks, reached = solve(min_keep)
    if reached <= target or min_keep <= 0.0:
        return masks
    # the floors alone cost more than the target: the target wins, the floor gives way (the
    # largest floor, to 1/64 of min_keep, with which the target is reached)
    low, high = 0.0, min_keep
    masks, reached = solve(0.0)
    if reached > target:  # not reachable even without floors: the cheapest set
        return masks
    for _ in range(6):
        mid = (low + high) / 2
        trial, reached = solve(mid)
        if reached <= target:
            low, masks = mid, trial
        else:
            high = mid
    return masks


@CONTROLLERS.register("adaptive")
class AdaptiveController(TargetController):
    """Per-unit multipliers from a knapsack of gradient importances (see the module docstring).

    Needs the Lightning layer's observations (:meth:`observe`, fed on every training step by
    :class:`~lightning_prune.module.structure.StructureLearning`); without them (the penalty
    used by hand) it adds nothing. ``update`` only records the measured ratio, and
    :attr:`multiplier` reports the mean absolute per-unit multiplier (for logs).

    Args:
        target: the cost ratio to reach.
        kind: ``"flops"`` or ``"params"``.
        measure: which ratio is recorded as the measured one (``"hard"`` or ``"relaxed"``).
        margin: how many standard deviations of a unit's pull its multiplier exceeds the pull
            by (larger: gates move more steadily, and more units move at once).
        smoothing: time constant of the pull statistics, as a fraction of the structure phase
            (at least :data:`MIN_SMOOTHING_STEPS` steps; 20 before :meth:`configure`).
        importance_weight: how far (in logit units) this step's importance ranking moves a
            unit's position in the knapsack's order; it decides among units whose gates sit
            close together (all of them at the start).
        decided: a unit in the keep set whose keep-probability is at least ``1 - decided / 2``
            gets no push (it is open already, with room inside the decided band of
            :class:`~lightning_prune.PruningSchedule`; pushing further would only saturate it).
        floor: every channel group keeps at least ``floor * sqrt(target)`` of its units, i.e.
            ``floor`` times the share a uniform pruning to the target would keep (rounded to
            whole units). The importances are first-order, so they miss that a layer grows
            more important as it empties; without a floor the knapsack starved the
            full-resolution decoder of a U-Net to 4 of 16 channels, and the network lost 29
            points of mIoU where a uniform width lost 7 (measured on generated shapes). ``0``
            lets a group shrink to its last unit (paper 1's unconstrained structure). Where
            the floors alone cost more than the target, they are lowered just enough for it
            (see :func:`keep_set`).
        importance: how a unit's importance is read from its pull statistics, a name in
            :data:`PULL_IMPORTANCES`: ``"taylor_squared"`` (the pull's root mean square over
            mini-batches) or ``"taylor"`` (its mean). From a trained network the mean pull is
            noise, and the knapsack chose a different, worse structure with every seed:
            ResNet-20 on CIFAR-10 at 25% of the FLOPs, 6 epochs from a trained checkpoint,
            64.7% (63.9-65.8, 3 seeds) with ``"taylor"``, 67.3% (66.3-68.2) with
            ``"taylor_squared"``. The root mean square is blind to the pull's sign, as
            Molchanov's criterion is: a unit whose closing would lower the loss on every
            batch ranks by the size of that effect too.
        within_group: how units are ordered within their group besides the gates' positions
            and the pull, a name in :data:`WITHIN_GROUP_ORDERS`: ``"weights"`` (the units'
            weights as a group: their producers' filters, norm scales and consumers' input
            channels, :func:`~lightning_prune.surgery.weight_importance`, re-read every step)
            or ``"knapsack"`` (no such term). The knapsack still decides how many units each
            group keeps. Measured on ResNet-20 / CIFAR-10 at 25% of the FLOPs, 6 epochs from a
            trained checkpoint: the knapsack's own choice of units, applied once to the
            checkpoint and fine-tuned, scored 68.5% (3 seeds), the same widths with the units
            of largest weights 69.6%, random units 66.0%; in the relaxation, ``"knapsack"``
            68.66% (+- 0.61, 5 seeds), ``"weights"`` 69.48% (+- 0.24, 10 seeds), one-shot
            magnitude pruning 69.49% (+- 0.27, the same 10 seeds; README, issue 11).
        within_weight: how far (in logit units) the within-group rank of the weights moves a
            unit's key at the start of the structure phase, ``within_weight * (rank - 0.5)``
            with ``rank`` in ``[0, 1]``; it fades linearly to nothing at the phase's end, so
            the gates settle on the order their positions reached (a constant term kept
            re-ordering units whose weights were close, and 16-step phases ended undecided).
        snap_at_end: final budget snap (see :class:`TargetController`).
        snap_tolerance: deviation accepted without snapping.

    Example:
        >>> c = AdaptiveController(target=0.5)
        >>> c.multiplier, c.unit_multipliers is None
        (0.0, True)
    """

    name = "adaptive"

    def __init__(
        self,
        target: float,
        kind: CostKind = "flops",
        measure: Measure = "hard",
        margin: float = 2.0,
        smoothing: float = 0.05,
        decided: float = 0.05,
        importance_weight: float = 0.5,
        floor: float = 0.7,
        importance: str = "taylor_squared",
        within_group: str = "weights",
        within_weight: float = 2.0,
        snap_at_end: bool = True,
        snap_tolerance: float = 0.005,
    ) -> None:
        super().__init__(target, kind, measure, -math.inf, math.inf, snap_at_end, snap_tolerance)
        if not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}.")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {smoothing}.")
        if not 0.0 < decided < 0.5:
            raise ValueError(f"decided must lie in (0, 0.5), got {decided}.")
        self.margin = float(margin)
        self.importance_weight = float(importance_weight)
        self.smoothing = float(smoothing)
        self.decided = float(decided)
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor must lie in [0, 1], got {floor}.")
        self.floor = float(floor)
        self.importance = importance
        self._importance = PULL_IMPORTANCES.get(importance)
        self.within_group = within_group
        if not within_weight >= 0.0:
            raise ValueError(f"within_weight must be >= 0, got {within_weight}.")
        self.within_weight = float(within_weight)
        self._within_group = WITHIN_GROUP_ORDERS.get(within_group)
        self.smoothing_steps = 20.0
        self.structure_steps = 400  # before configure(): the phase of the 20 smoothing steps
        #: Per gate, the multiplier of each unit (``None`` before the first observation).
        self.unit_multipliers: list[torch.Tensor] | None = None
        #: Per gate, the knapsack's keep set of the last observation.
        self.keep: list[torch.Tensor] | None = None
        self._mean: list[torch.Tensor | None] | None = None
        self._square: list[torch.Tensor | None] | None = None

    @property
    def min_keep(self) -> float:
        """Share of every group's units the knapsack always keeps: ``floor * sqrt(target)``."""
        return self.floor * math.sqrt(self.target)

    def configure(self, structure_steps: int) -> None:
        """Derive the smoothing window from the structure phase's length."""
        self.smoothing_steps = max(
            self.smoothing * max(int(structure_steps), 1), MIN_SMOOTHING_STEPS
        )
        self.structure_steps = max(int(structure_steps), 1)

    @property
    def wants_observations(self) -> bool:
        """Yes: the multipliers come from the gradients."""
        return True

    def observe(
        self,
        model: torch.nn.Module,
        pulls: list[torch.Tensor | None],
        costs: list[torch.Tensor | None],
    ) -> None:
        """Update the pull statistics, re-solve the knapsack and set the unit multipliers."""
        import lightning_prune as lp

        pulls = [None if p is None else p.detach().double().cpu() for p in pulls]
        rate = 1.0 / self.smoothing_steps
        if self._mean is None or self._square is None or _shapes(self._mean) != _shapes(pulls):
            self._mean = [None if p is None else p.clone() for p in pulls]
            self._square = [None if p is None else p * p for p in pulls]
        else:
            self._mean = _ema(self._mean, pulls, rate)
            self._square = _ema(self._square, [None if p is None else p * p for p in pulls], rate)
        gates = lp.get_gates(model)
        with torch.no_grad():
            positions = [g.decision_logits().detach().cpu().double() for g in gates]
        value = [
            None
            if m is None or q is None or c is None
            else self._importance(m, q) / c.detach().double().cpu().abs().clamp(min=1e-12)
            for m, q, c in zip(self._mean, self._square, costs)
        ]
        known = [v for v in value if v is not None]
        if not known:
            return
        flat = torch.cat([v.flatten() for v in known])
        ranks = _ranks(flat)
        keys: list[torch.Tensor | None] = []
        offset = 0
        for position, v in zip(positions, value):
            if v is None:
                keys.append(None)
                continue
            rank = ranks[offset : offset + v.numel()].view_as(v)
            offset += v.numel()
            # the gates' own positions (their integrated evidence) decide; the importance per
            # cost of this step's statistics orders units that sit close together
            keys.append(position + self.importance_weight * rank)
        weight = self.within_weight * max(0.0, 1.0 - self.steps / max(self.structure_steps, 1))
        if weight > 0:
            keys = [
                key
                if key is None or score is None or score.shape != key.shape
                else key + weight * (_ranks(score) - 0.5)
                for key, score in zip(keys, self._within_group(model))
            ]
        self.keep = keep_set(model, keys, self.current_target, self.kind, self.min_keep)
        scale = torch.cat(
            [
                m.abs() + (q - m * m).clamp(min=0.0).sqrt()
                for m, q in zip(self._mean, self._square)
                if m is not None and q is not None
            ]
        ).median()
        force = self.margin * float(scale)
        multipliers = []
        for gate, keep, m, q in zip(gates, self.keep, self._mean, self._square):
            with torch.no_grad():
                # hysteresis: pushed until half-way past the decided band, so a unit held at
                # its edge by the task does not sit undecided when the phase ends
                probability = gate.probabilities().detach().cpu().double()
                open_already = probability >= 1.0 - 0.5 * self.decided
            close = torch.full((gate.num_channels,), force, dtype=torch.float64)
            reopen = torch.full_like(close, force)
            if m is not None and q is not None and m.shape == close.shape:
                # every unit's multiplier beats its own pull by a margin of its own noise,
                # so a unit the task holds strongly open (or shut) still follows the knapsack
                spread = self.margin * (q - m * m).clamp(min=0.0).sqrt()
                close = torch.maximum(close, m + spread)
                reopen = torch.maximum(reopen, -m + spread)
            reopen = torch.where(open_already, 0.0, -reopen)
            multipliers.append(torch.where(keep, reopen, close))
        self.unit_multipliers = multipliers
        self.multiplier = force

    def unit_penalty(self, values: list[torch.Tensor]) -> torch.Tensor | None:
        """``sum_i lambda_i * w_i`` over the gates' values (``None`` before any observation).

        The values are those the forward pass applied (a stochastic gate's sample), so the
        penalty's gradient reaches each gate parameter through the same Jacobian as the task's
        pull, for every gate family.
        """
        if self.unit_multipliers is None or len(self.unit_multipliers) != len(values):
            return None
        total = values[0].new_zeros(())
        for lam, p in zip(self.unit_multipliers, values):
            if lam.shape != p.shape:
                return None
            total = total + (lam.to(device=p.device, dtype=p.dtype) * p).sum()
        self.applied_multiplier = self.multiplier
        return total

    def _update(self, error: float) -> float:
        return self.multiplier

    def state_dict(self) -> dict[str, Any]:
        """Window, pull statistics and unit multipliers, so a resumed run continues exactly.

        Tensors and plain data only: a checkpoint still loads with ``weights_only=True``.
        """
        return {
            **super().state_dict(),
            "smoothing_steps": self.smoothing_steps,
            "mean": self._mean,
            "square": self._square,
            "unit_multipliers": self.unit_multipliers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote."""
        super().load_state_dict(state)
        self.smoothing_steps = float(state.get("smoothing_steps", self.smoothing_steps))
        self._mean = state.get("mean")
        self._square = state.get("square")
        self.unit_multipliers = state.get("unit_multipliers")


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Each entry's rank among ``values`` (float64), from 0 (lowest) to 1 (highest)."""
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[values.argsort()] = torch.linspace(0.0, 1.0, values.numel(), dtype=torch.float64)
    return ranks


def _with_floor(key: torch.Tensor, min_keep: float) -> torch.Tensor:
    """``key`` with its ``round(min_keep * n)`` highest entries raised to infinity (always kept)."""
    count = round(min_keep * key.numel())
    if count <= 0:
        return key
    floored = key.clone()
    floored.view(-1)[key.flatten().topk(count).indices] = math.inf
    return floored


def _shapes(values: list[torch.Tensor | None]) -> list[tuple[int, ...] | None]:
    return [None if v is None else tuple(v.shape) for v in values]


def _ema(
    old: list[torch.Tensor | None], new: list[torch.Tensor | None], rate: float
) -> list[torch.Tensor | None]:
    """Exponential moving average per unit."""
    return [None if a is None or b is None else (1 - rate) * a + rate * b for a, b in zip(old, new)]
