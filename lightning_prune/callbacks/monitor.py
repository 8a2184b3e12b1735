"""``SparsityMonitor``: kept fractions and costs of the gated network, through any logger."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from typing_extensions import override

import lightning_prune as lp
from lightning_prune.dpp.apply import _mask_items
from lightning_prune.dpp.diagnostics import mask_confidence, mask_diversity
from lightning_prune.module import state as model_state

__all__ = ["SparsityMonitor"]


class SparsityMonitor(Callback):
    """Log how much of the network the gates keep, every ``log_every_n_steps`` optimizer steps.

    Logged with ``pl_module.log_dict`` (so CSV, TensorBoard, W&B, ... all get them):

    * ``prune/kept_soft/<group>`` and ``prune/kept_hard/<group>``: mean keep-probability and
      fraction of channels above the threshold, per channel group (``per_group=True``);
    * ``prune/kept_soft`` and ``prune/kept_hard``: the same over all gated channels;
    * ``prune/relaxed_flops_ratio``: differentiable cost over dense cost (what the structure
      loss sees);
    * ``prune/hard_flops``, ``prune/hard_flops_ratio``, ``prune/hard_params``,
      ``prune/hard_params_ratio``: cost of the network collapse would produce now;
    * when the model has DPP masks (kernel/weight, :func:`lightning_prune.dpp.apply_dpp`) or
      ``gumbel_topk`` gates: ``prune/dpp/confidence/<layer>`` and
      ``prune/dpp/diversity/<layer>`` (:func:`~lightning_prune.dpp.mask_confidence`,
      :func:`~lightning_prune.dpp.mask_diversity` from ``dpp_samples`` sampled masks, under
      a forked random state so training's random stream is untouched) and their means over
      layers ``prune/dpp/confidence`` and ``prune/dpp/diversity``.

    Lightning holds the last logged value between updates, so a Trainer logging more often
    than the monitor repeats it. Everything is computed from the gates and the engine's
    analytic cost model (no forward pass), and only on logging steps, so the monitor costs well
    under 1% of an epoch. With a :class:`~lightning.pytorch.loggers.WandbLogger` it also logs,
    every ``table_every_n_epochs`` epochs, a histogram of all keep-probabilities and a per-layer
    width table.

    Args:
        log_every_n_steps: logging period in optimizer steps (``None``: the Trainer's
            ``log_every_n_steps``; keep it a multiple of that, or values never reach the loggers).
        per_group: also log per-group kept fractions.
        prefix: key prefix.
        table_every_n_epochs: period of the W&B histogram and table (0 disables them).
        dpp_samples: sampled masks per layer for the DPP diversity (at least 2; 0 disables
            the DPP diagnostics).
        dpp_per_layer: also log the per-layer DPP diagnostics.

    Raises:
        ValueError: for a non-positive period, a negative table period or ``dpp_samples == 1``.

    Example:
        >>> from lightning_prune.callbacks import SparsityMonitor
        >>> SparsityMonitor(log_every_n_steps=10).log_every_n_steps
        10
    """

    def __init__(
        self,
        log_every_n_steps: int | None = None,
        per_group: bool = True,
        prefix: str = "prune/",
        table_every_n_epochs: int = 1,
        dpp_samples: int = 4,
        dpp_per_layer: bool = True,
    ) -> None:
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(
                "log_every_n_steps must be a positive number of optimizer steps, "
                f"got {log_every_n_steps}."
            )
        if table_every_n_epochs < 0:
            raise ValueError(f"table_every_n_epochs must be >= 0, got {table_every_n_epochs}.")
        if dpp_samples < 0 or dpp_samples == 1:
            raise ValueError(
                f"dpp_samples must be 0 (off) or >= 2 (masks compared pairwise), got {dpp_samples}."
            )
        self.dpp_samples = dpp_samples
        self.dpp_per_layer = dpp_per_layer
        self.log_every_n_steps = log_every_n_steps
        self.per_group = per_group
        self.prefix = prefix
        self.table_every_n_epochs = table_every_n_epochs
        self._every = log_every_n_steps or 50
        self._last_step = -1
        self._warned = False

    @property
    def state_key(self) -> str:
        """Distinguishes several instances in a checkpoint."""
        return self._generate_state_key(prefix=self.prefix)

    # ---------------------------------------------------------------------------- metrics
    @torch.no_grad()
    def compute(self, pl_module: torch.nn.Module) -> dict[str, float]:
        """The monitored numbers for ``pl_module`` now (empty without gates and DPP masks).

        Example:
            >>> SparsityMonitor().compute(torch.nn.Linear(2, 2))
            {}
        """
        metrics = self.compute_dpp(pl_module)
        groups = lp.get_groups(pl_module)
        if not groups:
            return metrics
        p = self.prefix
        soft_total = hard_total = channels = 0.0
        for group in groups:
            probabilities = group.gate.probabilities().float()
            hard = group.gate.hard_mask()
            soft_sum, hard_sum = float(probabilities.sum()), float(hard.sum())
            n = group.num_channels
            if self.per_group:
                metrics[f"{p}kept_soft/{group.name}"] = soft_sum / n
                metrics[f"{p}kept_hard/{group.name}"] = hard_sum / n
            soft_total += soft_sum
            hard_total += hard_sum
            channels += n
        metrics[f"{p}kept_soft"] = soft_total / channels
        metrics[f"{p}kept_hard"] = hard_total / channels
        dense_flops = float(lp.dense_cost(pl_module, kind="flops"))
        dense_params = float(lp.dense_cost(pl_module, kind="params"))
        metrics[f"{p}relaxed_flops_ratio"] = (
            float(lp.relaxed_cost(pl_module, kind="flops")) / dense_flops
        )
        hard_flops = float(lp.hard_cost(pl_module, kind="flops"))
        hard_params = float(lp.hard_cost(pl_module, kind="params"))
        metrics[f"{p}hard_flops"] = hard_flops
        metrics[f"{p}hard_flops_ratio"] = hard_flops / dense_flops
        metrics[f"{p}hard_params"] = hard_params
        metrics[f"{p}hard_params_ratio"] = hard_params / dense_params
        return metrics

    @torch.no_grad()
    def compute_dpp(self, pl_module: torch.nn.Module) -> dict[str, float]:
        """DPP mask confidence and diversity (empty without DPP masks or Gumbel top-k gates).

        Example:
            >>> from lightning_prune import dpp
            >>> net = torch.nn.Linear(8, 2)
            >>> _ = dpp.apply_dpp(net, "weight", k=2, n=4)
            >>> metrics = SparsityMonitor().compute_dpp(net)
            >>> metrics["prune/dpp/confidence"]  # uniform logits: nothing decided yet
            0.0
        """
        if not self.dpp_samples:
            return {}
        items = _mask_items(pl_module)
        if not items:
            return {}
        cuda = sorted(
            {int(m.temperature.device.index or 0) for _, m in items if m.temperature.is_cuda}
        )
        confidence: dict[str, float] = {}
        diversity: dict[str, float] = {}
        with torch.random.fork_rng(devices=cuda):  # the samples must not shift training's RNG
            for name, mask in items:
                (confidence[name],) = mask_confidence([mask]).values()
                (diversity[name],) = mask_diversity([mask], num_samples=self.dpp_samples).values()
        p = f"{self.prefix}dpp/"
        metrics: dict[str, float] = {}
        if self.dpp_per_layer:
            for name in confidence:
                metrics[f"{p}confidence/{name}"] = confidence[name]
                metrics[f"{p}diversity/{name}"] = diversity[name]
        metrics[f"{p}confidence"] = sum(confidence.values()) / len(confidence)
        metrics[f"{p}diversity"] = sum(diversity.values()) / len(diversity)
        return metrics

    def width_table(self, pl_module: torch.nn.Module) -> list[list[Any]]:
        """Rows ``[layer, group, dense width, kept (hard), kept (soft)]`` for every producer."""
        rows = []
        with torch.no_grad():
            for group in lp.get_groups(pl_module):
                kept = int(group.gate.hard_mask().sum())
                soft = float(group.gate.probabilities().sum())
                for layer in group.producers:
                    rows.append([layer, group.name, group.num_channels, kept, round(soft, 3)])
        return rows

    # ------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        trainer_every = max(int(getattr(trainer, "log_every_n_steps", 1) or 1), 1)
        self._every = self.log_every_n_steps or trainer_every
        if self.log_every_n_steps is not None and self._every % trainer_every:
            rank_zero_warn(
                f"SparsityMonitor(log_every_n_steps={self._every}) is not a multiple of the "
                f"Trainer's log_every_n_steps={trainer_every}; some values will not reach the "
                "loggers. Use a multiple of it."
            )

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self._every:
            return
        self._last_step = step
        metrics = self.compute(pl_module)
        if not metrics:
            if not self._warned and not model_state.was_collapsed(pl_module):
                rank_zero_warn(
                    "SparsityMonitor found no gates or DPP masks in the model; nothing to log."
                )
                self._warned = True
            return
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.table_every_n_epochs or (trainer.current_epoch + 1) % self.table_every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero or not lp.get_groups(pl_module):
            return
        import wandb  # only with a WandbLogger

        with torch.no_grad():
            values = torch.cat(
                [g.probabilities().detach().float().cpu() for g in lp.get_gates(pl_module)]
            )
        rows = self.width_table(pl_module)
        for logger in loggers:
            histogram = wandb.Histogram(values.tolist())
            key = f"{self.prefix}gate_probabilities"
            logger.log_metrics({key: histogram}, step=trainer.global_step)  # type: ignore[dict-item]
            logger.log_table(
                key=f"{self.prefix}layer_widths",
                columns=["layer", "group", "dense", "kept", "kept_soft"],
                data=rows,
                step=trainer.global_step,
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", -1))
