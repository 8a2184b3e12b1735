"""Sparsity penalties: pure functions registered by name, combined by :class:`SparsityPenalty`.

Functional core (tensors in, tensor out, no state):

* :func:`structure_loss` -- paper 1's ``|A_relaxed / A_dense - target|`` (times its weight ``k``).
* :func:`gate_l1` -- L1 on gate keep-probabilities (Continuous Sparsification).
* :func:`basis_penalty` -- the fence-sitter term ``||exp(-(s / 2) ** 2)||_2 / sqrt(N)``.
* :func:`~lightning_prune.dpp.dpp_entropy_penalty` -- DPP's entropy regulariser (term
  ``dpp_entropy``): mean entropy of ``softmax(phi)`` over the rows of every Gumbel top-k gate
  and kernel/weight DPP mask. It is the one term that needs no channel gates, so it also works
  with ``gate: none`` (kernel/weight DPP alone).

Each is wrapped by a *term* registered in :data:`PENALTIES` that reads what it needs from a
:class:`PenaltyContext` (the model and the training progress, with the gate probabilities and
relaxed cost ratios computed once per step and shared between terms). :class:`SparsityPenalty`
is the thin stateful shell: a list of weighted terms (each optionally ramped in) plus an optional
closed-loop :mod:`~lightning_prune.controller`. Everything is configurable from YAML::

    penalty:
      terms:
        - {name: structure, weight: 0.5, kind: flops, target: 0.0}
        - {name: basis, weight: 1.0, ramp: [0.5, 0.75]}
      controller:
        class_path: lightning_prune.controller.PIController
        init_args: {target: 0.3}

Example:
    >>> import torch
    >>> basis_penalty([torch.zeros(4)]).item()  # every logit undecided: maximal
    1.0
    >>> round(basis_penalty([torch.full((4,), 10.0)]).item(), 6)  # every logit decided
    0.0
    >>> structure_loss(torch.tensor(0.8), 0.5).item()
    0.30000001192092896
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

import lightning_prune as lp
from lightning_prune._registry import Registry
from lightning_prune.controller import TargetController, get_controller
from lightning_prune.dpp.diagnostics import dpp_entropy_penalty
from lightning_prune.gates import ChannelGate

__all__ = [
    "PENALTIES",
    "PenaltyContext",
    "PenaltyResult",
    "PenaltyTerm",
    "SparsityPenalty",
    "basis_penalty",
    "dpp_entropy_term",
    "gate_l1",
    "gate_logits",
    "penalty_needs_gates",
    "register_penalty",
    "structure_loss",
]

CostKind = Literal["flops", "params"]

# --------------------------------------------------------------------------- functional core


def _schedules():
    from lightning_prune.callbacks import schedules

    return schedules


def structure_loss(ratio: torch.Tensor, target: float = 0.0) -> torch.Tensor:
    """Paper 1's structure loss (without its weight): ``|ratio - target|``.

    Args:
        ratio: relaxed cost ratio ``A_relaxed / A_dense`` (differentiable).
        target: the ratio aimed at (0 keeps a steady shrink pressure).

    Example:
        >>> structure_loss(torch.tensor(0.25), 0.5).item()
        0.25
    """
    return (ratio - float(target)).abs()


def gate_l1(probabilities: Sequence[torch.Tensor], normalize: bool = True) -> torch.Tensor:
    """L1 norm of the gate keep-probabilities (Continuous Sparsification's ``sum(masks)``).

    Args:
        probabilities: one tensor of keep-probabilities per gate.
        normalize: divide by the number of units (a mean in ``[0, 1]``, independent of the
            network's width) instead of returning the plain sum.

    Example:
        >>> gate_l1([torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])]).item()
        0.5
        >>> gate_l1([torch.tensor([1.0, 0.0])], normalize=False).item()
        1.0
    """
    if not probabilities:
        raise ValueError("gate_l1 needs at least one gate's probabilities.")
    flat = torch.cat([p.reshape(-1) for p in probabilities])
    return flat.mean() if normalize else flat.sum()


def basis_penalty(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Fence-sitter ejector ``||exp(-(s / 2) ** 2)||_2 / sqrt(N)`` over all gate logits ``s``.

    1 when every logit sits at 0 (gate undecided), tending to 0 as logits move away from 0, so
    gates end near 0 or 1 and thresholding changes little.

    Example:
        >>> basis_penalty([torch.zeros(2), torch.zeros(2)]).item()
        1.0
    """
    if not logits:
        raise ValueError("basis_penalty needs at least one gate's logits.")
    s = torch.cat([t.reshape(-1) for t in logits])
    return torch.exp(-((s / 2.0) ** 2)).norm(p=2) / math.sqrt(s.numel())


def gate_logits(gate: nn.Module) -> torch.Tensor:
    """The pre-activation ``s`` of a gate, as used by :func:`basis_penalty`.

    ``logits`` for sigmoid gates (the raw ``s`` of ``sigmoid(k * s)``), ``log_alpha`` for
    hard-concrete gates, otherwise ``logit(probabilities())``.
    """
    for name in ("logits", "log_alpha"):
        value = getattr(gate, name, None)
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value
    probabilities = gate.probabilities()  # type: ignore[operator]
    return torch.logit(probabilities.clamp(1e-6, 1 - 1e-6))


# ------------------------------------------------------------------------------------ context


class PenaltyContext:
    """What penalty terms read, computed lazily and once per step.

    Args:
        model: the augmented model (gates found with ``lp.get_gates``).
        progress: fraction of training done, in ``[0, 1]`` (for ramps).

    Example:
        >>> ctx = PenaltyContext(torch.nn.Linear(2, 2), progress=0.5)
        >>> ctx.progress
        0.5
    """

    def __init__(self, model: nn.Module, progress: float = 1.0) -> None:
        self.model = model
        self.progress = float(progress)
        self._gates: list[ChannelGate] | None = None
        self._probabilities: list[torch.Tensor] | None = None
        self._ratios: dict[str, torch.Tensor] = {}

    @property
    def gates(self) -> list[ChannelGate]:
        """The model's gates (raises if it has none)."""
        if self._gates is None:
            gates = list(lp.get_gates(self.model))
            if not gates:
                raise lp.NotAugmentedError(
                    f"The sparsity penalty needs gates, but {type(self.model).__name__} has none. "
                    "Call lightning_prune.augment(model, example_inputs) first (Lightning: use "
                    "PrunableMixin or the RelaxedPruning callback)."
                )
            self._gates = gates
        return self._gates

    def probabilities(self) -> list[torch.Tensor]:
        """Differentiable keep-probabilities, one tensor per gate."""
        if self._probabilities is None:
            self._probabilities = [g.probabilities() for g in self.gates]
        return self._probabilities

    def logits(self) -> list[torch.Tensor]:
        """Gate pre-activations (see :func:`gate_logits`)."""
        return [gate_logits(g) for g in self.gates]

    def cost_ratio(self, kind: CostKind = "flops") -> torch.Tensor:
        """Differentiable ``relaxed_cost / dense_cost`` of ``kind``."""
        if kind not in self._ratios:
            relaxed = lp.relaxed_cost(self.model, kind=kind)
            self._ratios[kind] = relaxed / float(lp.dense_cost(self.model, kind=kind))
        return self._ratios[kind]


# ------------------------------------------------------------------------------- registered terms

#: ``fn(ctx, **options) -> Tensor``: one unweighted penalty term.
PenaltyFn = Callable[..., torch.Tensor]

PENALTIES: Registry[PenaltyFn] = Registry("penalty")
_NEEDS_GATES: dict[str, bool] = {}


def register_penalty(name: str, needs_gates: bool = True) -> Callable[[PenaltyFn], PenaltyFn]:
    """Decorator registering a term ``fn(ctx: PenaltyContext, **options) -> Tensor``.

    Args:
        name: the term's name (what ``PenaltyTerm(name=...)`` and YAML configs use).
        needs_gates: whether the term reads channel gates (``ctx.gates``, probabilities,
            costs). Terms that do not (e.g. ``dpp_entropy``) are the only ones allowed on a
            module without channel gates (``gate: none``).

    Example:
        >>> @register_penalty("l2_demo")
        ... def l2_demo(ctx: PenaltyContext) -> torch.Tensor:
        ...     return sum((p**2).mean() for p in ctx.probabilities())
        >>> "l2_demo" in PENALTIES, penalty_needs_gates("l2_demo")
        (True, True)
    """
    register = PENALTIES.register(name)

    def decorator(fn: PenaltyFn) -> PenaltyFn:
        fn = register(fn)
        _NEEDS_GATES[name.lower()] = bool(needs_gates)
        return fn

    return decorator


def penalty_needs_gates(name: str) -> bool:
    """Whether the registered term ``name`` needs channel gates (``True`` if unknown).

    Example:
        >>> penalty_needs_gates("structure"), penalty_needs_gates("dpp_entropy")
        (True, False)
    """
    return _NEEDS_GATES.get(name.lower(), True)


@register_penalty("structure")
def structure_term(
    ctx: PenaltyContext, kind: CostKind = "flops", target: float = 0.0
) -> torch.Tensor:
    """:func:`structure_loss` of the model's relaxed ``kind`` ratio."""
    return structure_loss(ctx.cost_ratio(kind), target)


@register_penalty("l1")
def l1_term(ctx: PenaltyContext, normalize: bool = True) -> torch.Tensor:
    """:func:`gate_l1` of the model's gates."""
    return gate_l1(ctx.probabilities(), normalize=normalize)


@register_penalty("basis")
def basis_term(ctx: PenaltyContext) -> torch.Tensor:
    """:func:`basis_penalty` of the model's gate logits."""
    return basis_penalty(ctx.logits())


@register_penalty("dpp_entropy", needs_gates=False)
def dpp_entropy_term(ctx: PenaltyContext) -> torch.Tensor:
    """DPP's entropy regulariser: mean entropy of ``softmax(phi)`` over all DPP rows.

    Covers every :class:`~lightning_prune.gates.GumbelTopKGate` and every kernel/weight DPP mask
    (:func:`lightning_prune.dpp.dpp_entropy_penalty`); weight it with lambda 1e-5 .. 5e-3 as in
    the paper. Needs no channel gates.

    Raises:
        ValueError: when the model has neither (the message names the fix).
    """
    return dpp_entropy_penalty(ctx.model)


GATELESS_FIX = (
    "Insert channel gates (gate: sigmoid / hard_concrete / gumbel_topk on PrunableMixin or "
    "ClassificationModule, or the RelaxedPruning callback), or, for kernel/weight DPP alone "
    "(gate: none), keep only terms that need no gates: {names}."
)


def _gateless_names() -> str:
    return ", ".join(n for n in PENALTIES.names() if not penalty_needs_gates(n)) or "none"


# ----------------------------------------------------------------------------------- the shell


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
        fields = {"name", "weight", "ramp", "ramp_schedule", "options", "key"}
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
        for term in self.terms:
            weight = term.factor(progress)
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
            value = controller.penalty(ratio)
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


def _zero_like_gates(ctx: PenaltyContext) -> torch.Tensor:
    try:
        reference = ctx.probabilities()[0]
    except (lp.PruningError, IndexError):
        return torch.zeros(())
    return reference.sum() * 0.0
