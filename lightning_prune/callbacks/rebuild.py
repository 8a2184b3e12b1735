"""Training on after the network changed shape: the optimizers and what else holds parameters."""

from __future__ import annotations

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_prune.module import companions

__all__ = ["rebuild_optimizers"]


def rebuild_optimizers(trainer: Trainer) -> None:
    """Re-create optimizers after the parameters changed, keeping the LR schedule position.

    Re-wraps the model in DDP (the old wrapper's buckets point at the old parameters), calls
    ``trainer.strategy.setup_optimizers`` (which runs ``configure_optimizers`` again) and
    restores each scheduler's state and current learning rates. Optimizer state (momentum)
    starts afresh: its tensors had the old shapes. Weight-averaging callbacks (EMA, SWA)
    restart their average from the new network
    (:func:`~lightning_prune.module.companions.reseed_averaging`).

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
    reseeded = companions.reseed_averaging(trainer, trainer.lightning_module)
    if reseeded:
        rank_zero_info(f"{', '.join(reseeded)}: averaging restarts from the new structure.")
