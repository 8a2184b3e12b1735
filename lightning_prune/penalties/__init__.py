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

The package is split by concept: :mod:`~lightning_prune.penalties.functions` (the pure
functions), :mod:`~lightning_prune.penalties.context` (:class:`PenaltyContext`),
:mod:`~lightning_prune.penalties.registry` (:data:`PENALTIES` and the built-in terms),
:mod:`~lightning_prune.penalties.term` (:class:`PenaltyTerm`) and
:mod:`~lightning_prune.penalties.sparsity` (:class:`SparsityPenalty`, :class:`PenaltyResult`).

Example:
    >>> import torch
    >>> basis_penalty([torch.zeros(4)]).item()  # every logit undecided: maximal
    1.0
    >>> round(basis_penalty([torch.full((4,), 10.0)]).item(), 6)  # every logit decided
    0.0
    >>> structure_loss(torch.tensor(0.8), 0.5).item()
    0.30000001192092896
"""

from lightning_prune.penalties.context import CostKind as CostKind
from lightning_prune.penalties.context import PenaltyContext
from lightning_prune.penalties.functions import basis_penalty, gate_l1, gate_logits, structure_loss
from lightning_prune.penalties.registry import _NEEDS_GATES as _NEEDS_GATES
from lightning_prune.penalties.registry import GATELESS_FIX as GATELESS_FIX
from lightning_prune.penalties.registry import (
    PENALTIES,
    dpp_entropy_term,
    penalty_needs_gates,
    register_penalty,
)
from lightning_prune.penalties.registry import PenaltyFn as PenaltyFn
from lightning_prune.penalties.registry import _gateless_names as _gateless_names
from lightning_prune.penalties.registry import basis_term as basis_term
from lightning_prune.penalties.registry import l1_term as l1_term
from lightning_prune.penalties.registry import structure_term as structure_term
from lightning_prune.penalties.sparsity import (
    DEFAULT_TARGET,
    PenaltyResult,
    SparsityPenalty,
    default_penalty,
)
from lightning_prune.penalties.sparsity import _default_terms as _default_terms
from lightning_prune.penalties.sparsity import _zero_like_gates as _zero_like_gates
from lightning_prune.penalties.term import PenaltyTerm
from lightning_prune.penalties.term import _schedules as _schedules

__all__ = [
    "DEFAULT_TARGET",
    "PENALTIES",
    "PenaltyContext",
    "PenaltyResult",
    "PenaltyTerm",
    "SparsityPenalty",
    "basis_penalty",
    "default_penalty",
    "dpp_entropy_term",
    "gate_l1",
    "gate_logits",
    "penalty_needs_gates",
    "register_penalty",
    "structure_loss",
]
