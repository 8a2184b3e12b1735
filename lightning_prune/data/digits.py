"""scikit-learn's bundled handwritten digits (real data, no download): offline classification."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lightning_prune.data.base import Split, VisionDataModule
from lightning_prune.data.datasets import TensorImageDataset
from lightning_prune.data.registry import register_datamodule


def load_digit_images(image_size: int = 8) -> tuple[Tensor, Tensor]:
    """All 1797 digits of :func:`sklearn.datasets.load_digits` as images in ``[0, 1]``.

    Args:
        image_size: output side; the 8x8 originals are upsampled bilinearly.

    Returns:
        ``(images [1797, 1, S, S] float32, labels [1797] int64)``.

    Example:
        >>> images, labels = load_digit_images(16)
        >>> tuple(images.shape), int(labels.max())
        ((1797, 1, 16, 16), 9)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    if image_size != images.shape[-1]:
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0)
    return images.contiguous(), torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


@register_datamodule("digits")
class DigitsDataModule(VisionDataModule):
    """The 1797 8x8 handwritten digits bundled with scikit-learn, as a 10-class image task.

    Needs no files and no network: the default data for demos, notebooks and tests. Images are
    upsampled to ``image_size`` (bilinear), repeated to ``channels`` channels and standardised
    with the training split's mean/std (stored in :attr:`mean` / :attr:`std` at setup). The
    train/val/test split is stratified and fixed by ``seed``.

    Args:
        image_size: side of the square images (8 keeps the originals).
        channels: 1 (grey) or 3 (grey repeated, for RGB models).
        val_fraction: fraction of all samples used for validation (0: validate on test).
        test_fraction: fraction of all samples used for testing.
        augment: random translation (up to ``image_size // 8`` pixels) for training.
        batch_size: samples per batch.
        num_workers: loader processes.
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the split and the subsets.

    Example:
        >>> dm = DigitsDataModule(image_size=16, channels=1, batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((32, 1, 16, 16), torch.int64)
    """

    task = "classification"
    num_classes = 10
    class_names = tuple(str(i) for i in range(10))

    def __init__(
        self,
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        augment: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        subset: int | None = None,
        eval_subset: int | None = None,
        pin_memory: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, drop_last, subset, eval_subset, seed)
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        if not (0.0 <= val_fraction < 1.0 and 0.0 < test_fraction < 1.0) or (
            val_fraction + test_fraction >= 1.0
        ):
            raise ValueError(
                "need 0 <= val_fraction, 0 < test_fraction and val_fraction + test_fraction < "
                f"1, got {val_fraction} and {test_fraction}."
            )
        self.save_hyperparameters()
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.augment = augment
        self.mean = (0.0,) * channels
        self.std = (1.0,) * channels
        self._data: dict[str, tuple[Tensor, Tensor]] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, image_size, image_size)``."""
        return (self.channels, self.image_size, self.image_size)

    def split_indices(self) -> dict[str, np.ndarray]:
        """Indices into ``load_digits()`` of each split (stratified, fixed by ``seed``)."""
        from sklearn.model_selection import train_test_split

        _, labels = load_digit_images(8)
        index = np.arange(len(labels))
        rest, test = train_test_split(
            index, test_size=self.test_fraction, stratify=labels, random_state=self.seed
        )
        if self.val_fraction == 0:
            return {"train": np.sort(rest), "val": np.sort(test), "test": np.sort(test)}
        train, val = train_test_split(
            rest,
            test_size=self.val_fraction / (1.0 - self.test_fraction),
            stratify=labels[rest],
            random_state=self.seed,
        )
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}

    def _prepare(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._data is None:
            images, labels = load_digit_images(self.image_size)
            parts = {k: torch.from_numpy(v) for k, v in self.split_indices().items()}
            train_images = images[parts["train"]]
            mean, std = float(train_images.mean()), float(train_images.std())
            images = ((images - mean) / std).expand(-1, self.channels, -1, -1).contiguous()
            self.mean, self.std = (mean,) * self.channels, (std,) * self.channels
            self._data = {k: (images[v], labels[v]) for k, v in parts.items()}
        return self._data

    def _build_split(self, split: Split) -> Dataset:
        images, labels = self._prepare()[split]
        transform = None
        if split == "train" and self.augment:
            pad = max(1, self.image_size // 8)
            transform = v2.RandomCrop(self.image_size, padding=pad, padding_mode="edge")
        return TensorImageDataset(images, labels, transform)
