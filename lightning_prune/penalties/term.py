"""One weighted, optionally ramped-in penalty term: :class:`PenaltyTerm`.

A term names a function of :data:`~lightning_prune.penalties.registry.PENALTIES`, its weight,
its ramp over training and the options passed to the function;
:class:`~lightning_prune.penalties.sparsity.SparsityPenalty` sums a list of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import lightning_prune as lp
from lightning_prune.penalties.context import PenaltyContext
from lightning_prune.penalties.registry import (
    GATELESS_FIX,
    PENALTIES,
    _gateless_names,
    penalty_needs_gates,
)

__all__ = ["PenaltyTerm"]


def _schedules():
    from lightning_prune.callbacks import schedules

    return schedules


@dataclass
class PenaltyTerm:
    """One weighted, optionally ramped-in penalty term.

    Args:
        name: a name registered in :data:`PENALTIES` (``structure``, ``l1``, ``basis``, ...).
        weight: multiplier of the term (``k_structure`` for ``structure``).
        ramp: ``(begin, end)`` fractions of training between which the weight ramps in from 0
            (``None``: full weight from the start). ``begin == end`` switches it on at ``begin``.
        ramp_schedule: the ramp's shape, a name from
            :data:`~lightning_prune.callbacks.schedules.SCHEDULES`.
        options: keyword arguments of the term function (e.g. ``kind``, ``target``).
        key: name under which the term is logged (default: ``name``).
        relative: scale the weight by the controller's multiplier (when the penalty has a
            controller), so the term's pull stays in proportion to the cost pressure whatever
            the scale of the task's gradients (the default fence-sitter term does this).

    Example:
        >>> term = PenaltyTerm("basis", weight=2.0, ramp=(0.5, 1.0))
        >>> term.factor(0.25), term.factor(1.0)
        (0.0, 2.0)
    """

    name: str
    weight: float = 1.0
    ramp: tuple[float, float] | None = None
    ramp_schedule: str = "cubic"
    options: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    relative: bool = False

    def __post_init__(self) -> None:
        if self.name not in PENALTIES:
            raise ValueError(
                f"Unknown penalty {self.name!r}. Choose one of: {', '.join(PENALTIES.names())} "
                "(or register your own with lightning_prune.penalties.register_penalty)."
            )
        if self.weight < 0:
            raise ValueError(
                f"The weight of penalty {self.name!r} must be >= 0, got {self.weight}."
            )
        if self.ramp is not None:
            begin, end = (float(v) for v in self.ramp)
            if not 0.0 <= begin <= end <= 1.0:
                raise ValueError(
                    f"ramp of penalty {self.name!r} must be (begin, end) fractions of training "
                    "with "
                    f"0 <= begin <= end <= 1, got {tuple(self.ramp)}."
                )
            self.ramp = (begin, end)
        _schedules().get_schedule(self.ramp_schedule)
        self.options = dict(self.options)
        if self.key is None:
            self.key = self.name

    @classmethod
    def from_config(cls, config: PenaltyTerm | Mapping[str, Any]) -> PenaltyTerm:
        """Build from a term or a flat mapping; keys that are not fields become ``options``.

        Example:
            >>> PenaltyTerm.from_config({"name": "structure", "weight": 0.5, "target": 0.3}).options
            {'target': 0.3}
        """
        if isinstance(config, PenaltyTerm):
            return config
        if not isinstance(config, Mapping) or "name" not in config:
            raise TypeError(
                "A penalty term is a PenaltyTerm or a mapping with a 'name' key, e.g. "
                f"{{'name': 'structure', 'weight': 0.5, 'target': 0.0}}; got {config!r}."
            )
        fields = {"name", "weight", "ramp", "ramp_schedule", "options", "key", "relative"}
        kwargs = {k: v for k, v in config.items() if k in fields}
        options = dict(kwargs.pop("options", None) or {})
        options.update({k: v for k, v in config.items() if k not in fields})
        if kwargs.get("ramp") is not None:
            kwargs["ramp"] = tuple(kwargs["ramp"])
        return cls(**kwargs, options=options)

    def factor(self, progress: float) -> float:
        """The effective weight at ``progress``."""
        if self.ramp is None:
            return self.weight
        schedules = _schedules()
        local = schedules.progress_between(progress, *self.ramp)
        return self.weight * schedules.get_schedule(self.ramp_schedule)(local, 0.0, 1.0)

    @property
    def needs_gates(self) -> bool:
        """Whether this term reads channel gates (see :func:`register_penalty`)."""
        return penalty_needs_gates(self.name)

    def __call__(self, ctx: PenaltyContext) -> torch.Tensor:
        """The unweighted term value.

        Raises:
            NotAugmentedError: when the term needs gates and the model has none (the message
                names the term and the fix).
        """
        try:
            return PENALTIES.get(self.name)(ctx, **self.options)
        except lp.NotAugmentedError as err:
            if not self.needs_gates:
                raise
            raise lp.NotAugmentedError(
                f"Penalty term {self.name!r} needs channel gates: {err} "
                + GATELESS_FIX.format(names=_gateless_names())
            ) from None
