"""The base class shared by every lightning_prune datamodule: loaders, splits, example inputs."""

from __future__ import annotations

from typing import ClassVar, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_prune.data.datasets import limit_dataset

Split = Literal["train", "val", "test"]
Task = Literal["classification", "segmentation"]


def as_size(value: tuple[int, int] | list[int], name: str = "size") -> tuple[int, int]:
    """Validate an ``(H, W)`` pair of positive integers (a YAML list is fine).

    Example:
        >>> as_size([32, 64])
        (32, 64)
    """
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two positive integers (H, W), got {value!r}.") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be two positive integers (H, W), got {value!r}.")
    return height, width


def as_scale_range(value: tuple[float, float] | list[float]) -> tuple[float, float]:
    """Validate a ``(min, max)`` pair of scale factors with ``0 < min <= max``.

    Example:
        >>> as_scale_range([0.5, 2])
        (0.5, 2.0)
    """
    low, high = (float(v) for v in value)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < min <= max, got {value!r}.")
    return low, high


class VisionDataModule(L.LightningDataModule):
    """Loader plumbing shared by the image datamodules.

    Subclasses set the class attributes, implement :meth:`_build_split` (one dataset per split,
    transforms applied) and :attr:`input_shape`. The base class caches the splits, applies the
    ``subset`` / ``eval_subset`` limits and builds the loaders (``shuffle`` and ``drop_last``
    for training only, ``pin_memory`` only when CUDA is available).

    Attributes:
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: number of classes the model must predict.
        ignore_index: the target value to ignore in segmentation losses/metrics (``None`` for
            classification).
        class_names: one name per class index.
        mean: per-channel normalisation mean (of images in ``[0, 1]``).
        std: per-channel normalisation standard deviation.

    Args:
        batch_size: samples per batch (all loaders).
        num_workers: loader worker processes (``0``: load in the main process).
        pin_memory: pin host memory when a CUDA device is available.
        drop_last: drop the last incomplete training batch.
        subset: keep only this many (seeded random) training samples; ``None`` keeps all.
        eval_subset: same for the validation and test splits.
        seed: seed of every data split and subset (never of the augmentations).
    """

    task: ClassVar[Task]
    num_classes: int
    ignore_index: int | None = None
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = True,
        drop_last: bool = False,
        subset: int | None = None,
        eval_subset: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}.")
        for name, value in (("subset", subset), ("eval_subset", eval_subset)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None (all samples) or >= 1, got {value}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.subset = subset
        self.eval_subset = eval_subset
        self.seed = seed
        self._splits: dict[str, Dataset] = {}

    # ------------------------------------------------------------------ contract
    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of one model input."""
        raise NotImplementedError

    def _build_split(self, split: Split) -> Dataset:
        """Return the dataset of ``split`` with its transforms (called once per split)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def example_input(self, batch_size: int = 1) -> Tensor:
        """A deterministic random batch shaped like the model input, for tracing and checks.

        Args:
            batch_size: leading dimension.

        Returns:
            ``float32`` tensor ``[batch_size, *input_shape]`` (standard normal, seed 0).
        """
        generator = torch.Generator().manual_seed(0)
        return torch.randn(batch_size, *self.input_shape, generator=generator)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits needed for ``stage`` (``fit``, ``validate``, ``test``, ``predict``).

        Each split is built once; later calls reuse it.
        """
        splits: tuple[Split, ...]
        if stage == "fit":
            splits = ("train", "val")
        elif stage == "validate":
            splits = ("val",)
        elif stage in ("test", "predict"):
            splits = ("test",)
        elif stage is None:
            splits = ("train", "val", "test")
        else:
            raise ValueError(f"unknown stage {stage!r}; expected fit, validate, test or predict.")
        for split in splits:
            if split not in self._splits:
                limit = self.subset if split == "train" else self.eval_subset
                self._splits[split] = limit_dataset(self._build_split(split), limit, self.seed)

    @property
    def train_set(self) -> Dataset | None:
        """The training dataset (``None`` before ``setup("fit")``)."""
        return self._splits.get("train")

    @property
    def val_set(self) -> Dataset | None:
        """The validation dataset (``None`` before ``setup("fit")`` / ``setup("validate")``)."""
        return self._splits.get("val")

    @property
    def test_set(self) -> Dataset | None:
        """The test dataset (``None`` before ``setup("test")``)."""
        return self._splits.get("test")

    def _loader(self, split: Split) -> DataLoader:
        if split not in self._splits:
            stage = {"train": "fit", "val": "fit", "test": "test"}[split]
            raise RuntimeError(
                f"{type(self).__name__}: the {split!r} split is not built; call "
                f"setup({stage!r}) first (the Trainer does this for you)."
            )
        train = split == "train"
        return DataLoader(
            self._splits[split],
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training loader."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """Validation loader (fixed order)."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """Test loader (fixed order)."""
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test loader, for ``Trainer.predict``."""
        return self._loader("test")
