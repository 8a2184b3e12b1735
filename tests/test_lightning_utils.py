"""Shared tiny models and data for the Lightning-layer tests (no tests in this file)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.module import PrunableMixin

NUM_CLASSES = 4


class TinyNet(nn.Module):
    """conv-bn-relu stem, one residual block, a strided conv, a classifier: three groups."""

    def __init__(self, width: int = 16, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        x = self.down(x)
        return self.fc(x.mean((2, 3)))


def make_data(n: int = 64, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return TensorDataset(x, y)


def make_loader(n: int = 64, batch_size: int = 16, seed: int = 0) -> DataLoader:
    return DataLoader(make_data(n, seed), batch_size=batch_size, shuffle=False)


class PlainModule(L.LightningModule):
    """An unmodified LightningModule (for RelaxedPruning)."""

    def __init__(self, width: int = 16, lr: float = 0.05, example: bool = True) -> None:
        super().__init__()
        self.net = TinyNet(width)
        self.lr = lr
        if example:
            self.example_input_array = torch.zeros(2, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4)


class MixinModule(PrunableMixin, PlainModule):
    """The same module with the mixin (via a base class that defines the hooks)."""

    def __init__(self, width: int = 16, lr: float = 0.05, **pruning) -> None:
        super().__init__(width=width, lr=lr, **pruning)


def trainer_kwargs(tmp_path, **overrides):
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return kwargs
