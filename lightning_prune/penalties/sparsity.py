"""The stateful penalty shell: :class:`SparsityPenalty` and its :class:`PenaltyResult`.

A :class:`SparsityPenalty` is a list of weighted terms
(:class:`~lightning_prune.penalties.term.PenaltyTerm`, each optionally ramped in) plus an
optional closed-loop :mod:`~lightning_prune.controller`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune.controller import TargetController, get_controller
from lightning_prune.penalties.context import PenaltyContext
from lightning_prune.penalties.registry import GATELESS_FIX, _gateless_names
from lightning_prune.penalties.term import PenaltyTerm

__all__ = ["DEFAULT_TARGET", "PenaltyResult", "SparsityPenalty", "default_penalty"]

#: The FLOPs ratio every entry point prunes towards when given nothing (half the FLOPs kept).
DEFAULT_TARGET = 0.5


@dataclass
class PenaltyResult:
    """A penalty's total and its weighted terms.

    Attributes:
        total: the sum to add to the task loss (differentiable; 0-dim).
        terms: weighted value of each term by key (plus ``target`` for a controller).
        extras: detached quantities worth logging (controller multiplier, measured ratio).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    extras: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "prune/penalty/") -> dict[str, torch.Tensor | float]:
        """Flat ``{name: value}`` ready for ``LightningModule.log_dict`` (values detached)."""
        out: dict[str, torch.Tensor | float] = {f"{prefix}total": self.total.detach()}
        out.update({f"{prefix}{k}": v.detach() for k, v in self.terms.items()})
        out.update({f"{prefix}{k}": float(v) for k, v in self.extras.items()})
        return out


def _default_terms() -> list[PenaltyTerm]:
    return [PenaltyTerm("structure", weight=0.5, options={"kind": "flops", "target": 0.0})]


class SparsityPenalty:
    """Weighted sum of registered penalty terms plus an optional closed-loop target controller.

    Args:
        terms: the terms, as :class:`PenaltyTerm` objects or flat mappings
            (``{"name": "structure", "weight": 0.5, "target": 0.0}``). ``None`` means paper 1's
            default, ``0.5 * |A_flops / A_dense - 0|``, unless a controller is given, in which
            case ``None`` means no fixed terms. ``[]`` means none.
        controller: a :class:`~lightning_prune.controller.TargetController` (or a mapping
            ``{"name": "pi", "target": 0.3, ...}``) adding ``lambda * (ratio - target)`` and
            updating ``lambda`` on every training step.

    Example:
        >>> penalty = SparsityPenalty(
        ...     terms=[{"name": "l1", "weight": 1e-2}, {"name": "basis", "ramp": [0.5, 0.75]}]
        ... )
        >>> [t.key for t in penalty.terms]
        ['l1', 'basis']
    """

    def __init__(
        self,
        terms: Sequence[PenaltyTerm | dict[str, Any]] | None = None,
        controller: TargetController | None = None,
    ) -> None:
        if isinstance(controller, Mapping):  # also accepted: {"name": "pi", "target": 0.3}
            config = dict(controller)
            if "name" not in config:
                raise TypeError(
                    "A controller mapping needs a 'name' ('lagrange' or 'pi'), e.g. "
                    "{'name': 'pi', 'target': 0.3}."
                )
            controller = get_controller(config.pop("name"), **config)
        if controller is not None and not isinstance(controller, TargetController):
            raise TypeError(
                f"controller must be a TargetController, got {type(controller).__name__}."
            )
        if terms is None:
            terms = [] if controller is not None else _default_terms()
        items: list[Any] = [terms] if isinstance(terms, (Mapping, PenaltyTerm)) else list(terms)
        self.terms = [PenaltyTerm.from_config(t) for t in items]
        keys = [str(t.key) for t in self.terms]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(
                f"Penalty terms must have distinct keys, {duplicates} repeat; give each a 'key'."
            )
        self.controller = controller
        self._relative_scale = 1.0

    def __call__(
        self, model: nn.Module, progress: float = 1.0, update_controller: bool = False
    ) -> PenaltyResult:
        """Evaluate the penalty of ``model`` at ``progress``.

        Args:
            model: the augmented model.
            progress: fraction of training done (drives ramps).
            update_controller: feed this step's measured ratio to the controller afterwards
                (training steps do; validation and manual calls need not).

        Returns:
            The total and the weighted terms.
        """
        ctx = PenaltyContext(model, progress)
        terms: dict[str, torch.Tensor] = {}
        extras: dict[str, float] = {}
        total: torch.Tensor | None = None
        self._relative_scale = (
            abs(self.controller.multiplier) if self.controller is not None else 1.0
        )
        for term in self.terms:
            weight = term.factor(progress) * (self._relative_scale if term.relative else 1.0)
            if weight == 0.0:  # ramp not started: skip the computation, log a zero
                terms[term.key] = _zero_like_gates(ctx).detach()  # type: ignore[index]
                continue
            value = weight * term(ctx)
            terms[term.key] = value  # type: ignore[index]
            total = value if total is None else total + value
        controller = self.controller
        if controller is not None:
            try:
                ratio = ctx.cost_ratio(controller.kind)
            except lp.NotAugmentedError as err:
                raise lp.NotAugmentedError(
                    f"The penalty's {type(controller).__name__} needs channel gates: {err} "
                    + GATELESS_FIX.format(names=_gateless_names())
                ) from None
            unit = controller.unit_penalty(ctx.values())
            value = unit if unit is not None else controller.penalty(ratio)
            terms["target"] = value
            total = value if total is None else total + value
            if update_controller:
                if controller.measure == "hard":
                    measured = lp.hard_cost(model, kind=controller.kind) / lp.dense_cost(
                        model, kind=controller.kind
                    )
                else:
                    measured = float(ratio.detach())
                controller.update(float(measured))
            extras["multiplier"] = controller.multiplier
            extras["measured_ratio"] = controller.last_measured
        if total is None:
            total = _zero_like_gates(ctx)
        return PenaltyResult(total=total, terms=terms, extras=extras)

    @property
    def needs_gates(self) -> bool:
        """Whether any term or the controller needs channel gates."""
        return self.controller is not None or any(t.needs_gates for t in self.terms)

    def check_gateless(self, owner: str = "gate=None") -> None:
        """Raise if this penalty cannot work on a model without channel gates.

        Raises:
            ValueError: naming the terms (or the controller) that need gates, and the fix.
        """
        needing = [str(t.key) for t in self.terms if t.needs_gates]
        if self.controller is not None:
            needing.append(f"controller ({type(self.controller).__name__})")
        if needing:
            raise ValueError(
                f"With {owner} the model has no channel gates, but the penalty needs them "
                f"for: {', '.join(needing)}. " + GATELESS_FIX.format(names=_gateless_names())
            )

    def finish(self, model: nn.Module) -> int:
        """End of training: the controller's final budget snap (0 without a controller).

        Returns:
            The number of gate units whose keep decision changed.
        """
        return self.controller.finish(model) if self.controller is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """The controller's state (the terms are configuration and carry no state)."""
        return {"controller": self.controller.state_dict() if self.controller is not None else None}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state written by :meth:`state_dict`."""
        saved = state.get("controller")
        if saved is not None and self.controller is not None:
            self.controller.load_state_dict(saved)

    def __repr__(self) -> str:
        terms = ", ".join(f"{t.key}={t.weight:g}" for t in self.terms)
        return f"SparsityPenalty(terms=[{terms}], controller={self.controller!r})"


def default_penalty(target: float | None = DEFAULT_TARGET) -> SparsityPenalty:
    """The penalty every entry point uses unless given one.

    ``target`` (a FLOPs ratio ``A / A_dense`` in ``(0, 1]``) is reached by an
    :class:`~lightning_prune.budget.AdaptiveController`: per-unit multipliers from a knapsack
    of the gradients' importance estimates, re-solved on every step against the schedule's
    target, so nothing needs tuning to the network, the loss or the run's length. ``None``
    gives paper 1's open-loop structure loss ``0.5 * |A / A_dense - 0|`` instead.

    Example:
        >>> default_penalty(0.3).controller.target
        0.3
    """
    from lightning_prune.budget import AdaptiveController

    if target is None:
        return SparsityPenalty()
    return SparsityPenalty(controller=AdaptiveController(target))


def _zero_like_gates(ctx: PenaltyContext) -> torch.Tensor:
    try:
        reference = ctx.probabilities()[0]
    except (lp.PruningError, IndexError):
        return torch.zeros(())
    return reference.sum() * 0.0
