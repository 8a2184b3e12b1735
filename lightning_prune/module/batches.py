"""The network input of a run's first training batch, for modules without example inputs.

A user's LightningModule rarely sets ``example_input_array``; the callbacks that need an input
(to trace the channel groups, count FLOPs, time the network) take it from the training data the
run is about to see, so nothing has to be added to the module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lightning_prune.module.state import default_example_inputs

__all__ = ["training_batch_inputs"]


def training_batch_inputs(trainer: Any, key: int | str | None = None) -> torch.Tensor | None:
    """The network input inside the first batch of ``trainer``'s training data.

    Sets up the fit loop's data (what ``fit`` does first anyway) and draws one batch from a
    fresh iterator under a forked RNG, so the run's own shuffling and augmentation are not
    shifted.

    Args:
        trainer: a Lightning ``Trainer`` inside ``fit`` (``setup`` or later).
        key: where the input sits in the batch (see
            :func:`~lightning_prune.module.state.default_example_inputs`).

    Returns:
        The input tensor, or ``None`` when the run has no training data.

    Raises:
        ExampleInputError: when the batch holds no recognisable input tensor.
    """
    trainer.fit_loop.setup_data()
    loaders = trainer.train_dataloader
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    if loaders is None:
        return None
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(loaders))
    return default_example_inputs(batch, key)
