"""Shared helpers of the DPP Lightning-layer tests (no tests in this file)."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from test_lightning_utils import make_loader, trainer_kwargs

#: Warnings the tiny DPP fits raise and the tests ignore (``pytestmark`` of each DPP file).
FILTERS = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*val_dataloader.*",
    "ignore:.*left 1 layer.*dense",
    "ignore:.*log_every_n_steps.*",
    "ignore:.*LeafSpec.*",
)


def fit(module, callbacks, tmp_path, loader=None, **kwargs):
    trainer = L.Trainer(**trainer_kwargs(tmp_path, callbacks=callbacks, **kwargs))
    trainer.fit(module, loader if loader is not None else make_loader(32, 8))
    return trainer


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))
