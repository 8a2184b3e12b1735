"""CamVid road scenes in the SegNet layout: 11 classes, label 11 = unlabelled (ignored)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_prune.data.base import Split, VisionDataModule, as_scale_range, as_size
from lightning_prune.data.errors import DataError, DatasetNotFoundError, open_image, read_rgb
from lightning_prune.data.joint_transforms import segmentation_transforms
from lightning_prune.data.registry import register_datamodule

CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
IGNORE_INDEX = 11
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: ``table[raw] = class``: ids 0..10 stay, anything else (11 = unlabelled) becomes 11.
LABEL_TABLE = torch.tensor([*range(11)] + [IGNORE_INDEX] * 245)

LAYOUT = """\
{root}/
  train/*.png|*.jpg     trainannot/*.png   label PNGs with the same stem, ids 0..10, 11 = void
  val/                  valannot/
  test/                 testannot/"""
FIX = (
    "pass --data.data_dir=/path/to/camvid (the folder holding train/ and trainannot/, "
    "or its parent holding camvid/)."
)


def find_camvid_root(data_dir: str | Path) -> Path:
    """The folder holding ``train/`` + ``trainannot/`` etc.: ``data_dir`` or ``data_dir/camvid``.

    Raises:
        DatasetNotFoundError: neither holds the SegNet layout.
    """
    root = Path(data_dir).expanduser()
    for candidate in (root, root / "camvid", root / "CamVid"):
        if any((candidate / f"{s}annot").is_dir() for s in ("train", "val", "test")):
            return candidate
    problem = (
        "the directory does not exist"
        if not root.exists()
        else "no 'train/' + 'trainannot/' (SegNet layout) here or in 'camvid/'"
    )
    raise DatasetNotFoundError("CamVid", root, problem, LAYOUT, FIX)


class CamVidDataset(Dataset):
    """Pairs ``<split>/<stem>.{png,jpg}`` with ``<split>annot/<stem>.png`` (SegNet layout).

    Args:
        root: the folder holding the split folders (see :func:`find_camvid_root`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transforms: joint ``(PIL image, PIL mask)`` transform.

    Raises:
        DatasetNotFoundError: a split folder is missing or empty, or an image lacks its label.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        transforms: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        image_dir, label_dir = self.root / split, self.root / f"{split}annot"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    "CamVid", self.root, f"no '{folder.name}/' folder", LAYOUT, FIX
                )
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise DatasetNotFoundError(
                "CamVid", self.root, f"'{split}/' holds no .png/.jpg images", LAYOUT, FIX
            )
        self.labels = [label_dir / f"{p.stem}.png" for p in self.images]
        missing = [label for label in self.labels if not label.is_file()]
        if missing:
            raise DatasetNotFoundError(
                "CamVid",
                self.root,
                f"{len(missing)} image(s) in '{split}/' lack a label PNG, e.g. "
                f"'{split}annot/{missing[0].name}'",
                LAYOUT,
                FIX,
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image = read_rgb(self.images[index], "CamVid")
        mask = open_image(self.labels[index], "CamVid")
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise DataError(
                f"CamVid: '{self.labels[index]}' is a {mask.mode} image; label PNGs must be "
                "single-channel class ids (0..10, 11 = void), not colour-coded."
            )
        if self.transforms is not None:
            return self.transforms(image, mask)
        return image, mask


@register_datamodule("camvid")
class CamVidDataModule(VisionDataModule):
    """CamVid (SegNet version: 367 train / 101 val / 233 test frames at 360x480), 11 classes.

    Training: joint random scale (``scale_range`` times ``base_size`` or the native size),
    random crop to ``size`` (padding labelled 11) and horizontal flip. Evaluation: resize to
    ``base_size`` (if given) and centre-crop/pad to ``size``. ImageNet mean/std normalisation.
    Label 11 (unlabelled) and any id above it are the ignore index 11.

    Args:
        data_dir: folder holding ``train/``, ``trainannot/``, ... (or its parent with ``camvid/``).
        size: ``(H, W)`` of the samples (training crop and evaluation size).
        base_size: ``(H, W)`` images are resized to first; ``None`` keeps the native 360x480.
        scale_range: random scale factors for training.
        augment: random scale/crop/flip for training (else the evaluation transform).
        batch_size: samples per batch.
        num_workers: loader processes.
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the subsets.

    Example:
        >>> dm = CamVidDataModule("data/camvid", size=(352, 480))
        >>> dm.num_classes, dm.ignore_index, tuple(dm.example_input(1).shape)
        (11, 11, (1, 3, 352, 480))
    """

    task = "segmentation"
    num_classes = 11
    ignore_index = IGNORE_INDEX
    class_names = CAMVID_CLASSES
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        data_dir: str = "data/camvid",
        size: tuple[int, int] = (352, 480),
        base_size: tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        augment: bool = True,
        batch_size: int = 8,
        num_workers: int = 4,
        subset: int | None = None,
        eval_subset: int | None = None,
        pin_memory: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, drop_last, subset, eval_subset, seed)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.size = as_size(size, "size")
        self.base_size = None if base_size is None else as_size(base_size, "base_size")
        self.scale_range = as_scale_range(scale_range)
        self.augment = augment

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, *size)``."""
        return (3, *self.size)

    def _build_split(self, split: Split) -> Dataset:
        transforms = segmentation_transforms(
            train=split == "train" and self.augment,
            size=self.size,
            base_size=self.base_size,
            scale_range=self.scale_range,
            mean=self.mean,
            std=self.std,
            ignore_index=IGNORE_INDEX,
            label_table=LABEL_TABLE,
        )
        return CamVidDataset(find_camvid_root(self.data_dir), split, transforms)
