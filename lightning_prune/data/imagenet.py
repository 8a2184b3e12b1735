"""ImageNet (or any ImageFolder classification tree with ``train/`` and ``val/`` splits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from lightning_prune.data.base import Split, VisionDataModule
from lightning_prune.data.datasets import TransformSubset
from lightning_prune.data.errors import DatasetNotFoundError
from lightning_prune.data.folders import class_folders, open_image_folder
from lightning_prune.data.registry import register_datamodule

LAYOUT = """\
{root}/
  train/<class>/*.JPEG   one folder per class (n01440764/ ...)
  val/<class>/*.JPEG     the same class folders (sort the flat official val/ into them)"""
FIX = "pass --data.data_dir=/path/to/imagenet (the folder holding train/ and val/)."


@register_datamodule("imagenet")
class ImageNetDataModule(VisionDataModule):
    """ImageNet-style classification from an ImageFolder tree ``train/<class>/``, ``val/<class>/``.

    Training: ``RandomResizedCrop(image_size)`` + horizontal flip. Evaluation: resize the short
    side to ``image_size / crop_fraction`` (256 for 224) then ``CenterCrop(image_size)``. Both
    normalise with the ImageNet mean/std. ``val/`` serves the validation and the test stage
    (ImageNet's test labels are not public). Class indices follow the sorted ``train/`` folder
    names; ``val/`` must hold the same folders.

    Args:
        data_dir: folder holding ``train/`` and ``val/``.
        image_size: side of the square model input.
        num_classes: number of class folders expected (1000 for ImageNet-1k).
        crop_fraction: eval centre-crop fraction (``image_size / resize``; 0.875 -> 256/224).
        batch_size: samples per batch.
        num_workers: loader processes.
        augment: RandomResizedCrop + flip for training (else the eval transform).
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the subsets.

    Example:
        >>> dm = ImageNetDataModule("data/imagenet", image_size=160)
        >>> dm.num_classes, tuple(dm.example_input(1).shape)
        (1000, (1, 3, 160, 160))
    """

    task = "classification"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        image_size: int = 224,
        num_classes: int = 1000,
        crop_fraction: float = 0.875,
        batch_size: int = 256,
        num_workers: int = 8,
        augment: bool = True,
        subset: int | None = None,
        eval_subset: int | None = None,
        pin_memory: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, drop_last, subset, eval_subset, seed)
        if image_size < 1 or num_classes < 1:
            raise ValueError(
                f"image_size and num_classes must be >= 1, got {image_size}, {num_classes}."
            )
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction}.")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.image_size = image_size
        self.num_classes = num_classes
        self.crop_fraction = crop_fraction
        self.augment = augment
        self.class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    def _root(self) -> Path:
        root = Path(self.data_dir).expanduser()
        if not root.is_dir():
            raise DatasetNotFoundError(
                "ImageNet", root, "the directory does not exist", LAYOUT, FIX
            )
        return root

    def _open(self, split: str) -> ImageFolder:
        root = self._root()
        reference = class_folders(root / "train") if (root / "train").is_dir() else None
        folder = open_image_folder(
            "ImageNet",
            root,
            split,
            LAYOUT,
            FIX,
            num_classes=self.num_classes,
            classes=reference if split != "train" else None,
            count_fix="pass --data.num_classes={found}, or point --data.data_dir at the full tree",
        )
        self.class_names = tuple(folder.classes)
        return folder

    def _transform(self, train: bool) -> v2.Compose:
        size = self.image_size
        steps: list[Any] = [v2.ToImage()]
        if train and self.augment:
            steps += [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            resize = round(size / self.crop_fraction)
            steps += [
                v2.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
                v2.CenterCrop(size),
            ]
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
            v2.ToPureTensor(),
        ]
        return v2.Compose(steps)

    def _build_split(self, split: Split) -> Dataset:
        folder = self._open("train" if split == "train" else "val")
        return TransformSubset(folder, None, self._transform(train=split == "train"))
