"""LightningDataModules for classification and segmentation, selectable by name.

Example:
    >>> from lightning_prune.data import DATAMODULES, build_datamodule
    >>> DATAMODULES.names()
    ['camvid', 'cifar10', 'cityscapes', 'digits', 'imagenet', 'shapes']
    >>> dm = build_datamodule("shapes", size=(32, 32))
    >>> dm.task, dm.num_classes
    ('segmentation', 4)
"""

from lightning_prune.data.base import VisionDataModule
from lightning_prune.data.camvid import CamVidDataModule, CamVidDataset
from lightning_prune.data.cifar import CIFAR10DataModule
from lightning_prune.data.cityscapes import (
    LABEL_TO_TRAIN_ID,
    CityscapesDataModule,
    CityscapesSemantic,
)
from lightning_prune.data.digits import DigitsDataModule
from lightning_prune.data.errors import DataError, DatasetNotFoundError
from lightning_prune.data.imagenet import ImageNetDataModule
from lightning_prune.data.registry import DATAMODULES, build_datamodule, register_datamodule
from lightning_prune.data.shapes import ShapesDataModule, ShapesDataset

__all__ = [
    "DATAMODULES",
    "LABEL_TO_TRAIN_ID",
    "CIFAR10DataModule",
    "CamVidDataModule",
    "CamVidDataset",
    "CityscapesDataModule",
    "CityscapesSemantic",
    "DataError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "ImageNetDataModule",
    "ShapesDataModule",
    "ShapesDataset",
    "VisionDataModule",
    "build_datamodule",
    "register_datamodule",
]
