"""Datamodules by name, so configs can pick data with a string: ``build_datamodule("cifar10")``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L

from lightning_prune._registry import Registry

DATAMODULES: Registry[type[L.LightningDataModule]] = Registry("datamodule")


def register_datamodule(
    name: str,
) -> Callable[[type[L.LightningDataModule]], type[L.LightningDataModule]]:
    """Class decorator registering a :class:`~lightning.LightningDataModule` under ``name``."""
    return DATAMODULES.register(name)


def build_datamodule(
    name: str | type[L.LightningDataModule], **kwargs: Any
) -> L.LightningDataModule:
    """Instantiate a datamodule given by registered name (or by class) with ``kwargs``.

    Args:
        name: a registered name (``"cifar10"``, ``"imagenet"``, ``"cityscapes"``, ``"camvid"``,
            ``"digits"``, ``"shapes"``; case-insensitive) or a datamodule class.
        **kwargs: passed to the class's ``__init__``.

    Returns:
        The datamodule (not set up yet).

    Raises:
        KeyError: for an unknown name; the message lists the registered names.
        TypeError: when ``name`` is neither a string nor a datamodule class.

    Example:
        >>> from lightning_prune.data import build_datamodule
        >>> dm = build_datamodule("digits", batch_size=16)
        >>> dm.num_classes, dm.task
        (10, 'classification')
    """
    if isinstance(name, str):
        return DATAMODULES.get(name)(**kwargs)
    if isinstance(name, type) and issubclass(name, L.LightningDataModule):
        return name(**kwargs)
    raise TypeError(
        f"name must be a registered datamodule name ({', '.join(DATAMODULES.names())}) or a "
        f"LightningDataModule subclass, got {name!r}."
    )
