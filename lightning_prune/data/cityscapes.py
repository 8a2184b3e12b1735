"""Cityscapes semantic segmentation (fine annotations, 19 train classes), via torchvision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision.datasets import Cityscapes

from lightning_prune.data.base import Split, VisionDataModule, as_scale_range, as_size
from lightning_prune.data.errors import DatasetNotFoundError
from lightning_prune.data.joint_transforms import segmentation_transforms
from lightning_prune.data.registry import register_datamodule

IGNORE_INDEX = 255


def _label_table() -> torch.Tensor:
    """``table[label_id] = train_id`` for label ids 0..255 (255 = ignore), from torchvision."""
    table = torch.full((256,), IGNORE_INDEX, dtype=torch.long)
    for cls in Cityscapes.classes:
        if 0 <= cls.id < 256 and 0 <= cls.train_id < IGNORE_INDEX:
            table[cls.id] = cls.train_id
    return table


#: The standard Cityscapes mapping ``labelId -> trainId`` (e.g. 7 road -> 0, 0 -> 255).
LABEL_TO_TRAIN_ID: torch.Tensor = _label_table()
#: Names of the 19 train ids, in order.
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    cls.name
    for cls in sorted(Cityscapes.classes, key=lambda c: c.train_id)
    if 0 <= cls.train_id < IGNORE_INDEX
)

LAYOUT = """\
{root}/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""
FIX = (
    "pass --data.data_dir=/path/to/cityscapes (the folder holding leftImg8bit/ and gtFine/; "
    "unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip there first)."
)


class CityscapesSemantic(Cityscapes):
    """torchvision's :class:`~torchvision.datasets.Cityscapes` (fine, ``labelIds``) with checks.

    Validates the layout *before* torchvision looks at it (so it never extracts archives into
    the data directory), keeps only ``*_leftImg8bit.png`` files, sorts them (a stable order on
    every file system) and checks that every image has its label file.

    Args:
        root: the Cityscapes folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transforms: joint ``(image, mask)`` transform.
    """

    def __init__(
        self, root: str | Path, split: str, transforms: Callable[[Any, Any], Any] | None = None
    ) -> None:
        root = Path(root)
        for sub in ("leftImg8bit", "gtFine"):
            if not (root / sub / split).is_dir():
                if not root.exists():
                    problem = "the directory does not exist"
                else:
                    problem = f"no '{sub}/{split}/' folder"
                    archives = sorted(p.name for p in root.glob("*.zip"))
                    if archives:  # torchvision would extract them here; we never write
                        problem += f" (found {', '.join(archives)}: unzip them here first)"
                raise DatasetNotFoundError("Cityscapes", root, problem, LAYOUT, FIX)
        super().__init__(
            str(root), split=split, mode="fine", target_type="semantic", transforms=transforms
        )
        found: list[str] = self.images  # type: ignore[has-type]
        found_targets: list[list[str]] = self.targets  # type: ignore[has-type]
        pairs = sorted(
            (image, targets)
            for image, targets in zip(found, found_targets)
            if image.endswith("_leftImg8bit.png")
        )
        if not pairs:
            raise DatasetNotFoundError(
                "Cityscapes",
                root,
                f"no '*_leftImg8bit.png' files under 'leftImg8bit/{split}/'",
                LAYOUT,
                FIX,
            )
        missing = [targets[0] for _, targets in pairs if not Path(targets[0]).is_file()]
        if missing:
            raise DatasetNotFoundError(
                "Cityscapes",
                root,
                f"{len(missing)} image(s) lack their label file, e.g. '{missing[0]}'",
                LAYOUT,
                FIX,
            )
        self.images = [image for image, _ in pairs]
        self.targets = [targets for _, targets in pairs]


@register_datamodule("cityscapes")
class CityscapesDataModule(VisionDataModule):
    """Cityscapes fine annotations: 19 classes, label ids mapped to train ids (255 = ignore).

    Uses torchvision's :class:`~torchvision.datasets.Cityscapes` and its layout. Images are first
    resized to ``base_size`` (full resolution is 1024x2048). Training then applies a joint random
    scale (``scale_range``), a random crop to ``size`` (padding labelled 255) and a horizontal
    flip; evaluation resizes to ``base_size`` and centre-crops/pads to ``size``. Images are
    normalised with the ImageNet mean/std. The test stage uses ``test_split`` (``"val"`` by
    default: the official test labels are withheld).

    Args:
        data_dir: folder holding ``leftImg8bit/`` and ``gtFine/``.
        size: ``(H, W)`` of the samples (training crop and evaluation size).
        base_size: ``(H, W)`` images are resized to before augmentation; ``None`` keeps 1024x2048.
        scale_range: random scale factors for training.
        augment: random scale/crop/flip for training (else the evaluation transform).
        test_split: split used by the test stage.
        batch_size: samples per batch.
        num_workers: loader processes.
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the subsets.

    Example:
        >>> dm = CityscapesDataModule("data/cityscapes", size=(256, 512), base_size=(256, 512))
        >>> dm.num_classes, dm.ignore_index, tuple(dm.example_input(1).shape)
        (19, 255, (1, 3, 256, 512))
    """

    task = "segmentation"
    num_classes = 19
    ignore_index = IGNORE_INDEX
    class_names = CITYSCAPES_CLASSES
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        data_dir: str = "data/cityscapes",
        size: tuple[int, int] = (512, 1024),
        base_size: tuple[int, int] | None = (512, 1024),
        scale_range: tuple[float, float] = (0.5, 2.0),
        augment: bool = True,
        test_split: Literal["val", "test"] = "val",
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
        self.test_split = test_split

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, *size)``."""
        return (3, *self.size)

    def _build_split(self, split: Split) -> Dataset:
        folder = self.test_split if split == "test" else split
        transforms = segmentation_transforms(
            train=split == "train" and self.augment,
            size=self.size,
            base_size=self.base_size,
            scale_range=self.scale_range,
            mean=self.mean,
            std=self.std,
            ignore_index=IGNORE_INDEX,
            label_table=LABEL_TO_TRAIN_ID,
        )
        return CityscapesSemantic(Path(self.data_dir).expanduser(), folder, transforms)
