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
    "LagrangeController",
    "PIController",
    "TargetController",
    "get_controller",
    "lagrange_update",
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

    def unit_penalty(self, values: list[torch.Tensor]) -> torch.Tensor | None:
        """A penalty with one multiplier per unit on the gates' values, if any.

        ``None`` (the default): :meth:`penalty` on the cost ratio is used instead.
        """
        return None

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
