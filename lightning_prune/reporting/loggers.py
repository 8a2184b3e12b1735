"""Send a :class:`~lightning_prune.reporting.PruningReport` summary to the trainer's loggers."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger

__all__ = ["log_report"]


def log_report(trainer: Trainer, summary: Mapping[str, Any], paths: Mapping[str, Path]) -> None:
    """Log the summary's ``report/*`` numbers to every logger, and to W&B its tables and plots.

    Args:
        trainer: the run's trainer (its loggers and global step).
        summary: the report (:func:`~lightning_prune.reporting.make_summary`).
        paths: the files written (``widths`` and ``training``: the plots logged to W&B).
    """
    numbers: dict[str, float] = {}
    for row in ("dense", "collapsed"):
        for key in ("params", "flops", "latency_ms", "latency_ort_ms", "metric"):
            value = summary[row].get(key)
            if value is not None:
                numbers[f"report/{row}_{key}"] = float(value)
    for key in (
        "flops_removed",
        "params_removed",
        "speedup",
        "speedup_onnxruntime",
        "efficiency",
        "efficiency_onnxruntime",
    ):
        if summary.get(key) is not None:
            numbers[f"report/{key}"] = float(summary[key])
    for logger in trainer.loggers:
        logger.log_metrics(numbers, step=trainer.global_step)
        if isinstance(logger, WandbLogger):
            columns = ["stage", "layers", "dense", "kept", "kept_fraction"]
            logger.log_table(
                key="report/kept_channels_per_stage",
                columns=columns,
                data=[[row[c] for c in columns] for row in summary["stages"]],
                step=trainer.global_step,
            )
            images = [str(paths[k]) for k in ("widths", "training") if k in paths]
            if images:
                logger.log_image(key="report/plots", images=images, step=trainer.global_step)
        logger.save()
