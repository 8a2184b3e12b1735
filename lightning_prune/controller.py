"""Closed-loop FLOPs / parameter targets: a Lagrange multiplier or a PI controller.

A fixed structure-loss weight (``k * |A_relaxed / A_dense - target|``) reaches *some* sparsity;
how much depends on the task loss, the learning rate and the schedule. A controller instead
adapts a multiplier ``lambda`` every training step so that the measured cost ratio settles on
the target:

``penalty = lambda * (A_relaxed / A_dense - target)``, with ``lambda`` raised while the
measured ratio (by default the *hard* ratio, i.e. the cost of the network that collapse would
produce) is above the target and lowered (down to negative values, which regrow channels) while
it is below.

The update rules are pure functions (:func:`lagrange_update`, :func:`pi_update`); the classes
are thin stateful shells whose state (``lambda``, the integral) goes into checkpoints through
``state_dict`` / ``load_state_dict``. Controllers are registered by name in
:data:`CONTROLLERS`.

Example:
    >>> import torch
    >>> controller = PIController(target=0.5, kp=2.0, ki=0.1)
    >>> round(controller.update(0.8), 6)  # measured ratio above target: lambda rises
    0.63
    >>> float(controller.penalty(torch.tensor(0.8)))  # doctest: +ELLIPSIS
    0.189...
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch

from lightning_prune._registry import Registry

__all__ = [
    "CONTROLLERS",
    "AdaptiveController",
    "LagrangeController",
    "PIController",
    "TargetController",
    "get_controller",
    "importance_threshold",
    "lagrange_update",
    "log_pi_update",
    "pi_update",
    "snap_to_budget",
]

CostKind = Literal["flops", "params"]
Measure = Literal["hard", "relaxed"]


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def lagrange_update(
    multiplier: float, error: float, lr: float, low: float = -math.inf, high: float = math.inf
) -> float:
    """One step of gradient ascent on the multiplier: ``clip(lambda + lr * error)``.

    Example:
        >>> lagrange_update(0.0, 0.2, lr=0.5)
        0.1
        >>> lagrange_update(0.1, -1.0, lr=0.5, low=0.0)
        0.0
    """
    return _clip(multiplier + lr * error, low, high)


def pi_update(
    integral: float,
    error: float,
    kp: float,
    ki: float,
    low: float = -math.inf,
    high: float = math.inf,
) -> tuple[float, float]:
    """One step of a PI controller with conditional-integration anti-windup.

    ``lambda = clip(kp * e + ki * (I + e))``; the error is added to the integral ``I`` only when
    that does not push an already saturated output further into saturation.

    Returns:
        ``(lambda, new_integral)``.

    Example:
        >>> pi_update(0.0, 0.3, kp=1.0, ki=0.5)
        (0.44999999999999996, 0.3)
        >>> pi_update(10.0, 0.3, kp=1.0, ki=0.5, high=1.0)  # saturated: integral frozen
        (1.0, 10.0)
    """
    candidate = integral + error
    raw = kp * error + ki * candidate
    saturated = (raw > high and error > 0) or (raw < low and error < 0)
    new_integral = integral if saturated else candidate
    return _clip(kp * error + ki * new_integral, low, high), new_integral


def log_pi_update(
    integral: float, error: float, kp: float, ki: float, low: float, high: float
) -> tuple[float, float]:
    """One step of a PI controller acting on ``log(lambda)``: the multiplier is multiplicative.

    ``I = clip(I + ki * e, low, high)`` and ``log(lambda / scale) = kp * e + I``: the multiplier
    moves by a *factor* per step, so it covers the orders of magnitude between networks and
    losses in a bounded number of steps, and it never changes sign (a small multiplier lets the
    task gradient re-open channels).

    Returns:
        ``(log(lambda / scale), new_integral)``.

    Example:
        >>> log_pi_update(0.0, 0.5, kp=2.0, ki=0.2, low=-10.0, high=5.0)
        (1.1, 0.1)
        >>> log_pi_update(4.95, 1.0, kp=2.0, ki=0.2, low=-10.0, high=5.0)  # clipped integral
        (7.0, 5.0)
    """
    new_integral = _clip(integral + ki * error, low, high)
    return kp * error + new_integral, new_integral


class TargetController:
    """Base class: holds the target and the multiplier, and turns them into a penalty.

    Args:
        target: the cost ratio ``A / A_dense`` to reach, in ``(0, 1]``.
        kind: ``"flops"`` or ``"params"``.
        measure: which ratio drives the update: ``"hard"`` (the cost of the network collapse
            would produce; the default, so training ends on the target) or ``"relaxed"``.
        min_multiplier: lower clip of ``lambda`` (negative values let pruned channels regrow).
        max_multiplier: upper clip of ``lambda``.
        snap_at_end: when training ends, flip the few least certain gate decisions needed to
            bring the hard ratio within ``snap_tolerance`` of the target (see
            :func:`snap_to_budget`); channel costs are discrete, so the loop alone settles
            within a channel or two of the target.
        snap_tolerance: deviation accepted without snapping.

    Raises:
        ValueError: on a target outside ``(0, 1]``, an unknown ``kind`` / ``measure`` or
            ``min_multiplier > max_multiplier``.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        target: float,
        kind: CostKind = "flops",
        measure: Measure = "hard",
        min_multiplier: float = -5.0,
        max_multiplier: float = 20.0,
        snap_at_end: bool = True,
        snap_tolerance: float = 0.005,
    ) -> None:
        if not 0.0 < float(target) <= 1.0:
            raise ValueError(
                f"target is a cost ratio A / A_dense in (0, 1], got {target}. For 'keep 30% of "
                "the FLOPs' use target=0.3."
            )
        if kind not in ("flops", "params"):
            raise ValueError(f"kind must be 'flops' or 'params', got {kind!r}.")
        if measure not in ("hard", "relaxed"):
            raise ValueError(f"measure must be 'hard' or 'relaxed', got {measure!r}.")
        if min_multiplier > max_multiplier:
            raise ValueError(
                f"min_multiplier ({min_multiplier}) must not exceed max_multiplier "
                f"({max_multiplier})."
            )
        self.target = float(target)
        self.kind: CostKind = kind
        self.measure: Measure = measure
        if snap_tolerance < 0:
            raise ValueError(f"snap_tolerance must be >= 0, got {snap_tolerance}.")
        self.min_multiplier = float(min_multiplier)
        self.max_multiplier = float(max_multiplier)
        self.snap_at_end = bool(snap_at_end)
        self.snap_tolerance = float(snap_tolerance)
        self.snapped = 0
        self.multiplier = 0.0
        self.last_measured = math.nan
        self.steps = 0
        #: The target in force now: a schedule ramps it from 1 down to :attr:`target`.
        self.current_target = self.target
        #: The multiplier of the last :meth:`penalty` (the one in this step's gradients).
        self.applied_multiplier = 0.0

    def penalty(self, ratio: torch.Tensor) -> torch.Tensor:
        """``lambda * (ratio - current target)``, differentiable in ``ratio`` (the relaxed one)."""
        self.applied_multiplier = self.multiplier
        return self.multiplier * (ratio - self.current_target)

    def update(self, measured: float) -> float:
        """Feed the measured ratio of this step; returns the new multiplier."""
        self.last_measured = float(measured)
        self.steps += 1
        self.multiplier = self._update(self.last_measured - self.current_target)
        return self.multiplier

    def configure(self, structure_steps: int) -> None:
        """Adapt gains that depend on the run's length (the number of structure-phase steps).

        Called by the Lightning layer when ``fit`` starts. The base class has none.
        """

    def observe(
        self,
        model: torch.nn.Module,
        pulls: list[torch.Tensor | None],
        costs: list[torch.Tensor | None],
    ) -> None:
        """Feed this step's per-unit gradients on the gates (no-op by default).

        Args:
            model: the augmented model.
            pulls: per gate, minus the loss gradient on the gate's values (positive where the
                task wants the unit open), ``None`` for a gate that saw no gradient.
            costs: per gate, the cost ratio's gradient on its keep-probabilities.
        """

    @property
    def wants_observations(self) -> bool:
        """Whether :meth:`observe` should be fed (it costs a small extra backward pass)."""
        return False

    def _update(self, error: float) -> float:
        raise NotImplementedError

    def finish(self, model: torch.nn.Module) -> int:
        """End of training: snap to the budget if enabled; returns the number of flipped units."""
        if not self.snap_at_end:
            return 0
        self.snapped = snap_to_budget(model, self.target, self.kind, self.snap_tolerance)
        return self.snapped

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where training stopped (plain floats)."""
        return {
            "name": self.name,
            "multiplier": self.multiplier,
            "last_measured": self.last_measured,
            "steps": self.steps,
            "snapped": self.snapped,
            "current_target": self.current_target,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`."""
        if state.get("name", self.name) != self.name:
            raise ValueError(
                f"The checkpoint holds the state of a {state.get('name')!r} controller, but this "
                f"run uses {self.name!r}; configure the same controller to resume."
            )
        self.multiplier = float(state["multiplier"])
        self.last_measured = float(state.get("last_measured", math.nan))
        self.steps = int(state.get("steps", 0))
        self.snapped = int(state.get("snapped", 0))
        self.current_target = float(state.get("current_target", self.target))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(target={self.target}, kind={self.kind!r}, "
            f"measure={self.measure!r}, multiplier={self.multiplier:.4g})"
        )


CONTROLLERS: Registry[type[TargetController]] = Registry("controller")


@CONTROLLERS.register("lagrange")
class LagrangeController(TargetController):
    """Lagrange multiplier updated by gradient ascent: ``lambda += lr * (measured - target)``.

    Args:
        target: the cost ratio to reach.
        kind: ``"flops"`` or ``"params"``.
        measure: ``"hard"`` or ``"relaxed"`` ratio as the feedback signal.
        lr: ascent step size of the multiplier per training step.
        min_multiplier: lower clip of ``lambda``.
        max_multiplier: upper clip of ``lambda``.
        snap_at_end: final budget snap (see :class:`TargetController`).
        snap_tolerance: deviation accepted without snapping.

    Example:
        >>> c = LagrangeController(target=0.5, lr=0.1)
        >>> round(c.update(0.9), 6), round(c.update(0.7), 6)
        (0.04, 0.06)
    """

    name = "lagrange"

    def __init__(
        self,
        target: float,
        kind: CostKind = "flops",
        measure: Measure = "hard",
        lr: float = 0.05,
        min_multiplier: float = -5.0,
        max_multiplier: float = 20.0,
        snap_at_end: bool = True,
        snap_tolerance: float = 0.005,
    ) -> None:
        super().__init__(
            target, kind, measure, min_multiplier, max_multiplier, snap_at_end, snap_tolerance
        )
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        self.lr = float(lr)

    def _update(self, error: float) -> float:
        return lagrange_update(
            self.multiplier, error, self.lr, self.min_multiplier, self.max_multiplier
        )


@CONTROLLERS.register("pi")
class PIController(TargetController):
    """PI controller: ``lambda = kp * e + ki * sum(e)`` with anti-windup, ``e = measured - target``.

    The proportional part reacts at once (damping the oscillation a pure multiplier shows); the
    integral removes the steady-state error, so the measured ratio settles on the target.

    Args:
        target: the cost ratio to reach.
        kind: ``"flops"`` or ``"params"``.
        measure: ``"hard"`` or ``"relaxed"`` ratio as the feedback signal.
        kp: proportional gain.
        ki: integral gain (per training step).

    The default gains suit Adam-trained gates (whose steps do not scale with the gradient, so
    what matters is the sign of ``lambda * dcost - dtask`` per unit): the proportional part
    settles ``lambda`` near the value that balances the task loss, the small integral removes
    the remaining error without winding up while gates travel to the boundary.
        min_multiplier: lower clip of ``lambda``.
        max_multiplier: upper clip of ``lambda``.
        snap_at_end: final budget snap (see :class:`TargetController`).
        snap_tolerance: deviation accepted without snapping.

    Example:
        >>> c = PIController(target=0.5, kp=1.0, ki=0.1)
        >>> round(c.update(0.7), 4), round(c.update(0.5), 4)
        (0.22, 0.02)
    """

    name = "pi"

    def __init__(
        self,
        target: float,
        kind: CostKind = "flops",
        measure: Measure = "hard",
        kp: float = 0.5,
        ki: float = 0.005,
        min_multiplier: float = -5.0,
        max_multiplier: float = 20.0,
        snap_at_end: bool = True,
        snap_tolerance: float = 0.005,
    ) -> None:
        super().__init__(
            target, kind, measure, min_multiplier, max_multiplier, snap_at_end, snap_tolerance
        )
        if kp < 0 or ki < 0 or kp + ki == 0:
            raise ValueError(f"Need kp >= 0, ki >= 0 and not both zero, got kp={kp}, ki={ki}.")
        self.kp, self.ki = float(kp), float(ki)
        self.integral = 0.0

    def _update(self, error: float) -> float:
        multiplier, self.integral = pi_update(
            self.integral, error, self.kp, self.ki, self.min_multiplier, self.max_multiplier
        )
        return multiplier

    def state_dict(self) -> dict[str, Any]:
        """Multiplier, integral and step count."""
        return {**super().state_dict(), "integral": self.integral}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore multiplier and integral."""
        super().load_state_dict(state)
        self.integral = float(state.get("integral", 0.0))


@CONTROLLERS.register("adaptive")
class AdaptiveController(TargetController):
    """The default FLOPs / parameter target of every lightning_prune entry point: scale-free.

    ``lambda = tau * sinh(kp * e + I)``, ``I += ki * e`` (:func:`log_pi_update`), with the
    normalised error ``e = clip((measured - target) / error_scale, -1, 1)``; ``I`` starts at
    ``asinh(1)`` (``lambda = tau``). ``sinh`` is exponential in either direction: the multiplier
    moves by factors, and it turns negative (re-opening channels) when the network has been
    pruned below the target for a while:

    * ``tau`` is a *feed-forward* estimate, recomputed on every training step from the
      gradients (:meth:`observe`): each unit's importance is its task pull (minus the loss
      gradient on the gate's value, i.e. the first-order loss of closing the unit; smoothed
      mean plus its noise, the RMS deviation) per unit of price (the cost ratio's gradient on
      its keep-probability), and ``tau``
      is the importance below which closing every unit would bring the relaxed cost to the
      current target. At ``lambda = tau`` exactly the units the target asks for feel more cost
      pressure than task pull, by more than the noise of that pull (so their gates move
      steadily instead of diffusing), whatever the network, the loss and its scale, and ``tau``
      follows the task as a trained network is pruned and its gradients grow;
    * the feedback ``exp(kp * e + I)`` only corrects what that estimate misses (bounded by
      ``integral_limits``), with ``ki`` derived from the length of the structure phase
      (:meth:`configure`: ``ki = ki_per_phase / steps``); the integral rests while a schedule
      ramps the target (the gates' lag behind a moving target is expected, not an error);
    * without observations (the penalty used outside the Lightning layer) ``tau`` is 1.

    Args:
        target: the cost ratio to reach.
        kind: ``"flops"`` or ``"params"``.
        measure: ``"hard"`` (default) or ``"relaxed"`` ratio as the feedback signal.
        kp: proportional gain on ``log(lambda)``.
        ki: integral gain per step (``None``: ``ki_per_phase / structure steps``, or
            ``ki_per_phase / 1000`` before :meth:`configure` is called).
        ki_per_phase: see ``ki``.
        initial_integral: starting value of ``I`` (``None``: ``asinh(1)``).
        integral_limits: ``(low, high)`` clip of ``I``.
        error_scale: the deviation of the measured ratio (e.g. 0.1: ten points of FLOPs)
            at which the feedback acts at full strength.
        smoothing: time constant of the importance estimates (an exponential moving average
            of the task pull), as a fraction of the structure phase (20 steps before
            :meth:`configure` is called).
        snap_at_end: final budget snap (see :class:`TargetController`).
        snap_tolerance: deviation accepted without snapping.

    Example:
        >>> c = AdaptiveController(target=0.5, ki=0.5)
        >>> round(c.update(1.0), 4)  # measured 1.0, target 0.5: e = 1, sinh(2 + asinh(1) + 0.5)
        14.6886
    """

    name = "adaptive"

    def __init__(
        self,
        target: float,
        kind: CostKind = "flops",
        measure: Measure = "hard",
        kp: float = 2.0,
        ki: float | None = None,
        ki_per_phase: float = 20.0,
        initial_integral: float | None = None,
        integral_limits: tuple[float, float] = (-4.0, 4.0),
        error_scale: float = 0.1,
        smoothing: float = 0.05,
        snap_at_end: bool = True,
        snap_tolerance: float = 0.005,
    ) -> None:
        super().__init__(target, kind, measure, 0.0, math.inf, snap_at_end, snap_tolerance)
        if not error_scale > 0:
            raise ValueError(f"error_scale must be positive, got {error_scale}.")
        self.error_scale = float(error_scale)
        low, high = (float(v) for v in integral_limits)
        if initial_integral is None:
            initial_integral = math.asinh(1.0)
        if kp < 0 or (ki is not None and ki <= 0) or ki_per_phase <= 0:
            raise ValueError(
                f"Need kp >= 0, ki > 0 (or None) and ki_per_phase > 0; got kp={kp}, ki={ki}, "
                f"ki_per_phase={ki_per_phase}."
            )
        if not low <= initial_integral <= high:
            raise ValueError(
                f"initial_integral ({initial_integral}) must lie within integral_limits "
                f"({low}, {high})."
            )
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must lie in (0, 1], got {smoothing}.")
        self.kp = float(kp)
        self.ki_given = ki
        self.ki_per_phase = float(ki_per_phase)
        self.ki = float(ki) if ki is not None else self.ki_per_phase / 1000.0
        self.initial_integral = float(initial_integral)
        self.integral_limits = (low, high)
        self.integral = self.initial_integral
        self.smoothing = float(smoothing)
        self.smoothing_steps = 20.0
        self.scale: float | None = None
        self._log_factor = 0.0
        self._pull: list[torch.Tensor | None] | None = None
        self._pull_sq: list[torch.Tensor | None] | None = None

    def configure(self, structure_steps: int) -> None:
        """Derive ``ki`` (unless given) and the smoothing window from the phase's length."""
        steps = max(int(structure_steps), 1)
        if self.ki_given is None:
            self.ki = self.ki_per_phase / steps
        self.smoothing_steps = max(self.smoothing * steps, MIN_SMOOTHING_STEPS)

    @property
    def wants_observations(self) -> bool:
        """Yes: ``tau`` is estimated from the gradients on every step."""
        return True

    def observe(
        self,
        model: torch.nn.Module,
        pulls: list[torch.Tensor | None],
        costs: list[torch.Tensor | None],
    ) -> None:
        """Update the importance estimates and ``tau`` (see the class docstring)."""
        rate = 1.0 / self.smoothing_steps
        # per step, the pull per unit of price
        samples = [
            None if p is None or c is None else _safe_ratio(p.detach().double(), c.detach())
            for p, c in zip(pulls, costs)
        ]
        if self._pull is None or self._pull_sq is None or _shapes(self._pull) != _shapes(samples):
            self._pull = [None if x is None else x.nan_to_num(0.0) for x in samples]
            self._pull_sq = [None if x is None else x.nan_to_num(0.0) ** 2 for x in samples]
        else:
            self._pull = _ema(self._pull, samples, rate)
            self._pull_sq = _ema(
                self._pull_sq, [None if x is None else x * x for x in samples], rate
            )
        importance: list[torch.Tensor | None] = []
        for mean, square in zip(self._pull, self._pull_sq):
            if mean is None or square is None:
                importance.append(None)
                continue
            importance.append(mean.clamp(min=0.0))
        tau = importance_threshold(model, importance, self.current_target, self.kind)
        if tau is not None:
            self.scale = tau
            if self.steps:
                self.multiplier = self.scale * math.sinh(self._log_factor)

    def _normalised(self, error: float) -> float:
        return _clip(error / self.error_scale, -1.0, 1.0)

    def _update(self, error: float) -> float:
        low, high = self.integral_limits
        # while a schedule still ramps the target, the gates lag behind it by design: integrating
        # that lag would wind the multiplier up and overshoot once they catch up
        ki = self.ki if self.current_target <= self.target else 0.0
        self._log_factor, self.integral = log_pi_update(
            self.integral, self._normalised(error), self.kp, ki, low, high
        )
        scale = self.scale if self.scale is not None else 1.0
        return scale * math.sinh(self._log_factor)

    def state_dict(self) -> dict[str, Any]:
        """Multiplier, integral, gains and the feed-forward scale."""
        return {
            **super().state_dict(),
            "integral": self.integral,
            "scale": self.scale,
            "ki": self.ki,
            "log_factor": self._log_factor,
            "smoothing_steps": self.smoothing_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` wrote."""
        super().load_state_dict(state)
        self.integral = float(state.get("integral", self.initial_integral))
        scale = state.get("scale")
        self.scale = float(scale) if scale is not None else None
        self.ki = float(state.get("ki", self.ki))
        self._log_factor = float(state.get("log_factor", 0.0))
        self.smoothing_steps = float(state.get("smoothing_steps", self.smoothing_steps))


def _shapes(values: list[torch.Tensor | None]) -> list[tuple[int, ...] | None]:
    return [None if v is None else tuple(v.shape) for v in values]


def _safe_ratio(pull: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """``pull / |cost|`` per unit, NaN where the cost gradient vanished (a saturated gate)."""
    scale = cost.double().abs()
    return torch.where(scale > 0, pull / scale.clamp(min=1e-300), torch.full_like(pull, math.nan))


def _ema(
    old: list[torch.Tensor | None], new: list[torch.Tensor | None], rate: float
) -> list[torch.Tensor | None]:
    """Exponential moving average per unit; units whose new value is NaN keep the old one."""
    out: list[torch.Tensor | None] = []
    for a, b in zip(old, new):
        if a is None or b is None:
            out.append(None)
        else:
            out.append(torch.where(torch.isnan(b), a, (1 - rate) * a + rate * b.nan_to_num(0.0)))
    return out


#: Fewest steps the importance estimates average over (their noise needs a few samples).
MIN_SMOOTHING_STEPS = 4.0


def importance_threshold(
    model: torch.nn.Module,
    importance: list[torch.Tensor | None],
    target: float,
    kind: CostKind = "flops",
) -> float | None:
    """The importance below which closing every unit brings the relaxed cost ratio to ``target``.

    Units are kept when their importance exceeds the threshold (gates without an estimate,
    ``None``, are kept); the relaxed cost is evaluated at those 0/1 values and the threshold is
    found by bisection over the sorted importances.

    Returns:
        The threshold, or ``None`` without any estimate. When closing only the units of
        importance 0 already meets the target, the smallest positive importance (so that they
        are still pushed).

    Example:
        >>> import torch, lightning_prune as lp
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
        ...                           torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
        >>> _ = lp.augment(net, torch.zeros(1, 3, 8, 8))
        >>> importance_threshold(net, [torch.tensor([1.0, 2.0, 3.0, 4.0])], 0.5)
        2.0
    """
    import lightning_prune as lp

    known = [v for v in importance if v is not None]
    if not known:
        return None
    gates = lp.get_gates(model)
    dense = float(lp.dense_cost(model, kind=kind))
    values = torch.unique(torch.cat([v.flatten().cpu() for v in known]))
    candidates = torch.cat([torch.zeros(1, dtype=values.dtype), values])

    def ratio(threshold: float) -> float:
        masks = [
            torch.ones(g.num_channels) if v is None else (v.cpu() > threshold).float()
            for g, v in zip(gates, importance)
        ]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        cost = lp.relaxed_cost(model, kind=kind, values=[m.to(device) for m in masks])
        return float(cost) / dense

    low, high = 0, len(candidates) - 1
    if ratio(float(candidates[0])) <= target:
        positive = values[values > 0]
        return float(positive[0]) if len(positive) else 0.0
    while low < high:  # smallest threshold whose ratio is at or below the target
        mid = (low + high) // 2
        if ratio(float(candidates[mid])) <= target:
            high = mid
        else:
            low = mid + 1
    return float(candidates[low])


def get_controller(name: str, **kwargs: Any) -> TargetController:
    """Build a registered controller by name.

    Raises:
        ValueError: for an unknown name (the message lists the choices).

    Example:
        >>> get_controller("lagrange", target=0.3)
        LagrangeController(target=0.3, kind='flops', measure='hard', multiplier=0)
    """
    if name not in CONTROLLERS:
        raise ValueError(
            f"Unknown controller {name!r}. Choose one of: {', '.join(CONTROLLERS.names())}."
        )
    return CONTROLLERS.get(name)(**kwargs)


def _scores(gate: torch.nn.Module) -> torch.Tensor:
    """Signed distance of each unit from its gate's decision boundary, in logit units."""
    with torch.no_grad():
        logits = getattr(gate, "logits", None)
        if isinstance(logits, torch.Tensor) and logits.dim() == 1:
            threshold = float(gate.threshold)  # type: ignore[arg-type]
            boundary = math.log(threshold / (1.0 - threshold))
            return gate.temperature.double() * logits.double() - boundary  # type: ignore[operator]
        p = gate.probabilities().double().clamp(1e-12, 1 - 1e-12)  # type: ignore[operator]
        threshold = float(gate.threshold)  # type: ignore[arg-type]
        return torch.logit(p) - math.log(threshold / (1.0 - threshold))


def snap_to_budget(
    model: torch.nn.Module, target: float, kind: CostKind = "flops", tolerance: float = 0.0
) -> int:
    """Flip the fewest, least certain gate decisions so the hard cost ratio is nearest ``target``.

    The controller steers training towards the target; this final correction closes the
    residual gap left by the quantisation of channel costs. All units are ranked by their
    distance from the decision boundary (in logit units) and one global shift of the boundary
    is chosen by bisection; only units between the old and the new boundary change state
    (their gates get :meth:`~lightning_prune.gates.ChannelGate.set_mask`). Nothing changes when
    the ratio is already within ``tolerance``.

    Args:
        model: the augmented model.
        target: the cost ratio to reach.
        kind: ``"flops"`` or ``"params"``.
        tolerance: accepted absolute deviation before anything is flipped.

    Returns:
        The number of units whose keep decision changed.
    """
    import lightning_prune as lp  # the engine; imported late to keep this module light

    gates = lp.get_gates(model)
    if not gates:
        return 0
    dense = float(lp.dense_cost(model, kind=kind))

    def ratio() -> float:
        return float(lp.hard_cost(model, kind=kind)) / dense

    current = ratio()
    if abs(current - target) <= tolerance:
        return 0
    originals = [g.hard_mask().clone() for g in gates]
    saved = [{k: v.detach().clone() for k, v in g.state_dict().items()} for g in gates]
    scores = [_scores(g) for g in gates]
    finite = torch.cat(
        [s[torch.isfinite(s)] for s in scores] + [torch.zeros(1, dtype=torch.float64)]
    )
    span = float(finite.abs().max()) + 1.0

    def apply(shift: float) -> float:
        for gate, score in zip(gates, scores):
            gate.set_mask(score > shift)
        return ratio()

    # the hard ratio falls as the boundary shift rises; bisect for the shift nearest the target
    low, high = (-span, 0.0) if current < target else (0.0, span)
    best_shift, best_err = 0.0, abs(current - target)
    for _ in range(60):
        mid = 0.5 * (low + high)
        value = apply(mid)
        err = abs(value - target)
        if err < best_err or (err == best_err and abs(mid) < abs(best_shift)):
            best_shift, best_err = mid, err
        if value > target:
            low = mid
        else:
            high = mid
    changed = 0
    for gate, state, old, score in zip(gates, saved, originals, scores):
        gate.load_state_dict(state)
        new = score > best_shift
        flipped = (old.cpu() != new.cpu()).to(old.device)
        if not bool(flipped.any()):
            continue
        gate.set_mask(new)
        with torch.no_grad():  # units that keep their decision keep their exact values
            for name, param in gate.named_parameters():
                if param.dim() == 1 and param.shape[0] == flipped.shape[0]:
                    param.copy_(torch.where(flipped, param, state[name].to(param)))
        changed += int(flipped.sum())
    return changed
