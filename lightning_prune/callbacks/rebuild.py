"""Training on after the network changed shape: the optimizers and what else holds parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_prune.module import companions
from lightning_prune.surgery.provenance import parameter_sources

__all__ = ["OptimizerState", "capture_optimizer_state", "rebuild_optimizers"]


@dataclass
class OptimizerState:
    """The optimizers' per-parameter state by parameter name, taken before a collapse.

    Attributes:
        states: by parameter name: the optimizer class, its state for the parameter, and the
            parameter's shape then.
        sources: by parameter name: where each element of the collapsed parameter comes from
            (:func:`~lightning_prune.surgery.provenance.parameter_sources`).
    """

    states: dict[str, tuple[type, dict[str, Any], torch.Size]] = field(default_factory=dict)
    sources: dict[str, torch.Tensor] = field(default_factory=dict)


def capture_optimizer_state(
    trainer: Trainer, module: torch.nn.Module, round_to: int = 1
) -> OptimizerState:
    """Take the optimizers' state of ``module``'s parameters before collapsing it.

    Args:
        trainer: the trainer whose optimizers train ``module``.
        module: the augmented module, its masks decided, about to be collapsed.
        round_to: the ``round_to`` the collapse will use.
    """
    names = {id(p): name for name, p in module.named_parameters()}
    captured = OptimizerState()
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                name, state = names.get(id(param)), optimizer.state.get(param)
                if name is not None and state and name not in captured.states:
                    captured.states[name] = (type(optimizer), dict(state), param.shape)
    if captured.states:
        captured.sources = parameter_sources(module, round_to)
    return captured


def _sliced(state: dict[str, Any], shape: torch.Size, source: torch.Tensor) -> dict | None:
    """``state`` of a parameter of ``shape``, its elements taken from ``source`` (-1: zero).

    ``None`` when the state holds anything but per-element tensors, scalar tensors and plain
    numbers (e.g. factored moments, L-BFGS's history): that state starts afresh.
    """
    moved: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == shape:
            index = source.to(value.device)
            taken = value.reshape(-1)[index.clamp(min=0)]
            moved[key] = torch.where(index >= 0, taken, torch.zeros_like(taken))
        elif isinstance(value, torch.Tensor) and value.dim() == 0:
            moved[key] = value.clone()  # a step count
        elif value is None or isinstance(value, (bool, int, float)):
            moved[key] = value
        else:
            return None
    return moved


def _carry_state(trainer: Trainer, captured: OptimizerState) -> int:
    """Give the new optimizers the captured state of the parameters they kept; how many."""
    names = {id(p): name for name, p in trainer.lightning_module.named_parameters()}
    carried = 0
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                name = names.get(id(param))
                if name not in captured.states or name not in captured.sources:
                    continue
                kind, state, shape = captured.states[name]
                source = captured.sources[name]
                if kind is not type(optimizer) or source.shape != param.shape:
                    continue
                moved = _sliced(state, shape, source)
                if moved is not None:
                    optimizer.state[param] = moved
                    carried += 1
    return carried


def rebuild_optimizers(trainer: Trainer, captured: OptimizerState | None = None) -> None:
    """Re-create optimizers after the parameters changed, keeping the LR schedule position.

    Re-wraps the model in DDP (the old wrapper's buckets point at the old parameters), calls
    ``trainer.strategy.setup_optimizers`` (which runs ``configure_optimizers`` again) and
    restores each scheduler's state and current learning rates. With ``captured`` (taken by
    :func:`capture_optimizer_state` before the collapse) each kept parameter's optimizer state
    (momentum, Adam's moments and step count) goes on with the elements it kept, so training
    continues as if the removed channels had never been there; without it, or for a parameter
    the collapse computed anew, the state starts afresh. Weight-averaging callbacks (EMA, SWA)
    restart their average from the new network
    (:func:`~lightning_prune.module.companions.reseed_averaging`).

    Args:
        trainer: the trainer to rebuild the optimizers of.
        captured: the optimizers' state before the parameters changed.

    Raises:
        MisconfigurationException: for strategies other than single-device and DDP.
    """
    strategy = trainer.strategy
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise MisconfigurationException(
            f"Staged pruning changes parameter shapes during training, which lightning_prune "
            f"supports with single-device and DDP strategies, not {type(strategy).__name__}."
        )
    saved = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    if isinstance(strategy, DDPStrategy):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()
    strategy.setup_optimizers(trainer)
    for config, state in zip(trainer.lr_scheduler_configs, saved):
        config.scheduler.load_state_dict(state)
        last = state.get("_last_lr")
        if last is not None:
            for group, lr in zip(config.scheduler.optimizer.param_groups, last):
                group["lr"] = lr
    if captured is not None and captured.states and not _carry_state(trainer, captured):
        rank_zero_info(
            "The optimizers' state could not follow the new structure (no parameter could be "
            "located in the old one); it starts afresh."
        )
    reseeded = companions.reseed_averaging(trainer, trainer.lightning_module)
    if reseeded:
        rank_zero_info(f"{', '.join(reseeded)}: averaging restarts from the new structure.")
