"""The two tasks: datamodules, networks, the plain training module and the common evaluation."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from benchmarks.compare.data import DataSource, describe
from benchmarks.compare.profiles import TaskProfile
from lightning_prune.data import (
    CamVidDataModule,
    CIFAR10DataModule,
    CityscapesDataModule,
    VisionDataModule,
)
from lightning_prune.models import build_model

TASKS = ("classification", "segmentation")


def sgd(params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """The optimizer of every phase of every method: SGD, Nesterov momentum 0.9."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def task_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Cross-entropy (with the ignore index for segmentation)."""
    if ignore_index is None:
        return F.cross_entropy(logits, target)
    return F.cross_entropy(logits, target.long(), ignore_index=ignore_index)


class TaskModule(L.LightningModule):
    """A plain LightningModule around a network: cross-entropy, SGD, cosine schedule per step.

    Used for the dense checkpoint, the dense baseline, Torch-Pruning's training phases and
    Lightning's ``ModelPruning`` (lightning_prune's runs use the library's own
    ``ClassificationModule`` / ``SegmentationModule``).
    """

    def __init__(
        self, net: nn.Module, lr: float, weight_decay: float, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.ignore_index = ignore_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        loss = task_loss(self(x), y, self.ignore_index)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = sgd(self.parameters(), self.lr, self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = CosineAnnealingLR(optimizer, T_max=total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def head_layer(net: nn.Module) -> nn.Module:
    """The last conv / linear layer in registration order: the classifier or segmentation head.

    Every method leaves its output channels alone (they are the classes).
    """
    last = None
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            last = module
    if last is None:
        raise ValueError(f"{type(net).__name__} has no conv or linear layer.")
    return last


@dataclass
class TaskSetup:
    """One task of a benchmark run: its profile, data and the shared evaluation.

    Args:
        name: ``classification`` or ``segmentation``.
        profile: the task profile.
        source: where the data is.
        num_workers: DataLoader workers.
        seed: seed of subsets and training.
    """

    name: str
    profile: TaskProfile
    source: DataSource
    num_workers: int = 0
    seed: int = 0
    _datamodule: VisionDataModule | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- data
    @property
    def datamodule(self) -> VisionDataModule:
        """The datamodule (built once; decoded data is cached inside it)."""
        if self._datamodule is None:
            self._datamodule = self._build_datamodule()
        return self._datamodule

    def _build_datamodule(self) -> VisionDataModule:
        p = self.profile
        common: dict[str, Any] = {
            "batch_size": p.batch_size,
            "num_workers": self.num_workers,
            "subset": p.train_subset,
            "eval_subset": p.eval_subset,
            "seed": self.seed,
        }
        path = str(self.source.path)
        if p.dataset == "cifar10":
            return CIFAR10DataModule(path, download=self.source.download, **common)
        kwargs = {"size": p.input_size, "base_size": p.base_size, "scale_range": p.scale_range}
        if p.dataset == "camvid":
            return CamVidDataModule(path, **kwargs, **common)
        if p.dataset == "cityscapes":
            return CityscapesDataModule(path, **kwargs, **common)
        raise SystemExit(f"unknown dataset {p.dataset!r}")

    def prepare(self) -> None:
        """Download if needed and build every split."""
        dm = self.datamodule
        dm.prepare_data()
        dm.setup(None)

    @property
    def num_classes(self) -> int:
        return self.datamodule.num_classes

    @property
    def ignore_index(self) -> int | None:
        return self.datamodule.ignore_index

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.datamodule.input_shape)  # type: ignore[return-value]

    @property
    def metric_name(self) -> str:
        return "accuracy" if self.name == "classification" else "mIoU"

    def example(self, batch: int = 1) -> torch.Tensor:
        """A deterministic input batch (for FLOPs, tracing and latency)."""
        return self.datamodule.example_input(batch)

    def description(self) -> str:
        """Which data, which subsets (every row carries this)."""
        dm = self.datamodule

        def total(dataset: Any) -> int:
            base = getattr(dataset, "dataset", dataset)
            return len(base) if base is not None else 0

        train, test = dm.train_set, dm.test_set
        size = (
            "" if self.name == "classification" else f" at {dm.input_shape[1]}x{dm.input_shape[2]}"
        )
        return (
            describe(
                self.source,
                len(train) if train is not None else 0,
                total(train),
                len(test) if test is not None else 0,
                total(test),
                split="test" if self.profile.dataset != "cityscapes" else "val",
            )
            + size
        )

    # ---------------------------------------------------------------- networks
    def build_net(self) -> nn.Module:
        """A freshly initialised network of the profile's architecture."""
        kwargs = dict(self.profile.model_kwargs)
        return build_model(self.profile.model, num_classes=self.num_classes, **kwargs)

    def plain_module(self, net: nn.Module, lr: float) -> TaskModule:
        """The plain training module (dense, Torch-Pruning, ModelPruning)."""
        return TaskModule(net, lr, self.profile.weight_decay, self.ignore_index)

    def optimizer(self, lr: float) -> Any:
        """``optimizer(params)`` for lightning_prune's ready modules (the same SGD recipe)."""
        return functools.partial(sgd, lr=lr, weight_decay=self.profile.weight_decay)

    # ---------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, net: nn.Module, device: str | torch.device = "cpu") -> float:
        """Top-1 accuracy or mIoU (macro over classes, ignore index excluded) on the test split.

        The same code for every method: only the network's forward is used.
        """
        dm = self.datamodule
        dm.setup("test")
        was_training = net.training
        net.eval().to(device)
        try:
            if self.name == "classification":
                correct = total = 0
                for x, y in dm.test_dataloader():
                    pred = net(x.to(device)).argmax(1).cpu()
                    correct += int((pred == y).sum())
                    total += int(y.numel())
                return correct / max(total, 1)
            from torchmetrics.classification import MulticlassJaccardIndex

            metric = MulticlassJaccardIndex(
                self.num_classes, ignore_index=self.ignore_index, average="macro"
            )
            for x, y in dm.test_dataloader():
                logits = net(x.to(device))
                if isinstance(logits, dict):
                    logits = logits["out"]
                if logits.shape[-2:] != y.shape[-2:]:
                    logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear")
                metric.update(logits.argmax(1).cpu(), y.long())
            value = float(metric.compute())
            return value if math.isfinite(value) else 0.0
        finally:
            net.train(was_training)
