"""One way to run a Lightning ``fit`` for every method: same Trainer settings, timed."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from lightning.pytorch import Callback


@dataclass
class Runner:
    """Trainer settings shared by every method.

    Args:
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Lightning devices.
        precision: Lightning precision (``32-true``; ``16-mixed`` / ``bf16-mixed`` on GPUs).
        seed: seed set before every fit (same data order for every method).
        root: scratch directory of the Trainers (nothing is logged or checkpointed).
    """

    accelerator: str = "cpu"
    devices: Any = 1
    precision: str = "32-true"
    seed: int = 0
    root: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="bench_compare_"))

    def trainer(self, epochs: int, callbacks: Sequence[Callback] = ()) -> L.Trainer:
        """A quiet Trainer: no logger, checkpoints, progress bar or validation loop.

        Every method is evaluated once at the end by the same function, so validation during
        training would only cost time.
        """
        return L.Trainer(
            max_epochs=epochs,
            accelerator=self.accelerator,
            devices=self.devices,
            precision=self.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=list(callbacks),
            default_root_dir=self.root,
        )

    def fit(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        epochs: int,
        callbacks: Sequence[Callback] = (),
    ) -> float:
        """Seed, fit for ``epochs`` and return the wall time in seconds (0 when ``epochs == 0``)."""
        if epochs <= 0:
            return 0.0
        L.seed_everything(self.seed, verbose=False)
        # Lightning keeps the train/eval state modules enter fit with; a network that was just
        # pruned or evaluated in eval mode would otherwise train with frozen BatchNorm stats
        module.train()
        trainer = self.trainer(epochs, callbacks)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*val_dataloader.*")
            warnings.filterwarnings("ignore", ".*limit_val_batches.*")
            trainer.fit(module, datamodule=datamodule)
        return time.perf_counter() - start

    @property
    def device(self) -> str:
        """Where evaluation runs: ``cuda`` for GPU runs, else ``cpu``."""
        import torch

        if self.accelerator in ("gpu", "cuda") or (
            self.accelerator == "auto" and torch.cuda.is_available()
        ):
            return "cuda"
        return "cpu"


def quiet_lightning() -> None:
    """Silence Lightning's per-fit banners (GPU available, seed set, ...)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*is deprecated.*",
        ".*GPU available but not used.*",
        ".*val_dataloader.*",
    ):
        warnings.filterwarnings("ignore", pattern)
