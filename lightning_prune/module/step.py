"""Adding the sparsity penalty to what ``training_step`` returns (mixin and callback alike).

The penalty must be part of the loss Lightning back-propagates, so it is added to the
``training_step`` output itself: before Lightning divides by ``accumulate_grad_batches``,
before the precision plugin scales it, and inside the DDP-wrapped forward. The gradients are
then exactly those of ``loss + penalty``. Hooks that run later (``on_train_batch_end``,
``on_before_backward``) cannot do this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

import lightning_prune as lp
from lightning_prune.dpp import get_dpp_masks
from lightning_prune.module.state import structure_fixed
from lightning_prune.penalties import SparsityPenalty

RETURNED_NONE = (
    "`training_step` returned None, so there is no loss to add the sparsity penalty to. "
    "Return the loss tensor (or a dict with a 'loss' key); to skip a batch while pruning, "
    "return a zero loss such as `loss * 0` instead."
)
NO_LOSS_KEY = (
    "`training_step` returned a dict without a 'loss' key (keys: {keys}); lightning_prune adds "
    "the sparsity penalty to output['loss']. Return {{'loss': loss, ...}}."
)
BAD_OUTPUT = (
    "`training_step` returned a {kind}; lightning_prune adds the sparsity penalty to the loss, "
    "so return the loss tensor or a dict with a 'loss' key."
)


def add_penalty(output: Any, penalty: torch.Tensor) -> Any:
    """``output + penalty`` for a loss tensor, or a copy of a dict with ``loss`` increased.

    Raises:
        MisconfigurationException: for ``None``, a dict without ``"loss"`` or another type.

    Example:
        >>> add_penalty({"loss": torch.tensor(1.0), "n": 3}, torch.tensor(0.5))
        {'loss': tensor(1.5000), 'n': 3}
    """
    if output is None:
        raise MisconfigurationException(RETURNED_NONE)
    if isinstance(output, torch.Tensor):
        return output + penalty.to(output.dtype)
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise MisconfigurationException(NO_LOSS_KEY.format(keys=sorted(map(str, output))))
        new = dict(output)
        loss = output["loss"]
        new["loss"] = loss + penalty.to(loss.dtype)
        return new
    raise MisconfigurationException(BAD_OUTPUT.format(kind=type(output).__name__))


def training_progress(trainer: Any) -> float:
    """Fraction of training done: optimizer steps over the estimated total, in ``[0, 1]``.

    Falls back to epochs when the total number of steps is unknown, and to 1 without one.
    """
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:
        total = math.inf
    if math.isfinite(total) and total > 0:
        return min(max(trainer.global_step / total, 0.0), 1.0)
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        return min(max(trainer.current_epoch / max_epochs, 0.0), 1.0)
    return 1.0


def run_epochs(trainer: Any) -> float | None:
    """The run's length in epochs: ``max_epochs``, else ``max_steps`` in epochs, else ``None``.

    A ``max_steps``-only run (``max_epochs=-1``) counts its optimizer steps per epoch from the
    training batches and ``accumulate_grad_batches``; a run bounded only by time (or an
    iterable dataset without a length) has no known length.

    Example:
        >>> import types
        >>> run_epochs(types.SimpleNamespace(max_epochs=6))
        6.0
        >>> run_epochs(types.SimpleNamespace(
        ...     max_epochs=-1, estimated_stepping_batches=60, num_training_batches=16,
        ...     accumulate_grad_batches=1))
        3.75
    """
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        return float(max_epochs)
    try:
        total = float(trainer.estimated_stepping_batches)
        if not math.isfinite(float(trainer.num_training_batches)):
            # (with max_steps, Lightning answers the estimate without loading the data)
            trainer.fit_loop.setup_data()
        batches = float(trainer.num_training_batches)
    except Exception:
        return None
    if not (math.isfinite(total) and math.isfinite(batches)) or total <= 0 or batches <= 0:
        return None
    per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
    return total / per_epoch


def attached_trainer(module: Any) -> Any:
    """The Trainer ``module`` is attached to, or ``None``."""
    try:
        return module.trainer
    except (RuntimeError, AttributeError):
        return None


class PenaltyApplier:
    """Computes the penalty for a LightningModule, logs its terms and adds it to a step output.

    Args:
        penalty: the penalty to apply.
        prefix: logging prefix of the terms.
        require_gates: apply it only to a module with channel gates (``True``: what the mixin
            with gates and ``RelaxedPruning`` need, a collapsed module trains without penalty);
            ``False``: also to a module with kernel/weight DPP masks but no gates
            (``gate: none``, :class:`~lightning_prune.callbacks.DynamicProbabilisticPruning`).
    """

    def __init__(
        self,
        penalty: SparsityPenalty,
        prefix: str = "prune/penalty/",
        require_gates: bool = True,
    ) -> None:
        self.penalty = penalty
        self.prefix = prefix
        self.require_gates = require_gates
        self._total_steps: dict[int, float] = {}
        self._warned = False
        #: A resolved pruning schedule: penalty ramps then follow the structure phase.
        self.schedule: Any = None

    def applies_to(self, module: Any) -> bool:
        """Whether the penalty has anything to act on in ``module``."""
        if lp.is_augmented(module):
            return True
        return not self.require_gates and bool(get_dpp_masks(module))

    def progress(self, module: Any) -> float:
        """Training progress of ``module``'s trainer (1.0 without a trainer)."""
        trainer = attached_trainer(module)
        if trainer is None:
            return 1.0
        if self.schedule is not None:
            return float(self.schedule.structure_progress(int(trainer.global_step)))
        key = id(trainer)
        if key not in self._total_steps:
            try:
                self._total_steps = {key: float(trainer.estimated_stepping_batches)}
            except Exception:
                self._total_steps = {key: math.inf}
        total = self._total_steps[key]
        if math.isfinite(total) and total > 0:
            return min(max(trainer.global_step / total, 0.0), 1.0)
        return training_progress(trainer)

    def compute(self, module: Any, update_controller: bool = True) -> torch.Tensor:
        """The penalty of ``module`` now, with its terms logged (when a trainer is attached)."""
        result = self.penalty(module, self.progress(module), update_controller=update_controller)
        if attached_trainer(module) is not None:
            module.log_dict(result.metrics(self.prefix), on_step=True, on_epoch=False, batch_size=1)
        return result.total

    def __call__(self, module: Any, output: Any) -> Any:
        """Add the penalty to a ``training_step`` output.

        A no-op when :meth:`applies_to` is false (an unaugmented or collapsed module; without
        ``require_gates``, a module with neither gates nor DPP masks, with a one-time warning).
        """
        if not self.applies_to(module) or structure_fixed(module):
            if not self.require_gates and self.penalty.terms and not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"{type(module).__name__} has neither channel gates nor DPP masks, so the "
                    f"penalty terms {[t.key for t in self.penalty.terms]} have nothing to act on "
                    "and are not added. Add DPP masks (the DynamicProbabilisticPruning callback "
                    "or lightning_prune.dpp.apply_dpp) or channel gates."
                )
            return output
        if output is None:
            raise MisconfigurationException(RETURNED_NONE)
        return add_penalty(output, self.compute(module))


def finish_penalty(module: Any, penalty: SparsityPenalty) -> None:
    """End of training: the controller's final budget snap, reported on rank 0."""
    flipped = penalty.finish(module)
    controller = penalty.controller
    if controller is not None and controller.snap_at_end:
        dense = lp.dense_cost(module, kind=controller.kind)
        ratio = lp.hard_cost(module, kind=controller.kind) / dense
        rank_zero_info(
            f"lightning_prune: hard {controller.kind} ratio {ratio:.4f} at the end of training "
            f"(target {controller.target}; {flipped} gate decisions snapped)."
        )
