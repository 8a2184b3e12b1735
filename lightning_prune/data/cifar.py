"""CIFAR-10 from torchvision's pickled batches or from an ImageFolder tree of JPEG/PNG files."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import pil_to_tensor

from lightning_prune.data.base import Split, VisionDataModule
from lightning_prune.data.datasets import TensorImageDataset, TransformSubset, split_indices
from lightning_prune.data.errors import DataError, DatasetNotFoundError
from lightning_prune.data.folders import open_image_folder
from lightning_prune.data.registry import register_datamodule

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

LAYOUT = """\
{root}/
  cifar-10-batches-py/   torchvision's format: data_batch_1 .. data_batch_5, test_batch
or an ImageFolder tree:
{root}/
  train/<class>/*.jpg    10 class folders: airplane automobile ... truck
  test/<class>/*.jpg     (or val/)"""
FIX = (
    "pass --data.data_dir=/path/to/cifar10 (the folder holding one of the layouts above), "
    "or --data.download=true to let torchvision download the batches there."
)

Format = Literal["batches", "folder"]


def read_cifar_batches(folder: Path, names: tuple[str, ...]) -> TensorImageDataset:
    """Read torchvision/Krizhevsky CIFAR pickles into an in-memory uint8 dataset.

    Args:
        folder: the ``cifar-10-batches-py`` folder.
        names: batch file names (``data_batch_1`` ...).

    Returns:
        A :class:`TensorImageDataset` of ``uint8 [N, 3, 32, 32]`` images.

    Raises:
        DataError: a file is not a CIFAR batch.
    """
    images: list[np.ndarray] = []
    labels: list[int] = []
    for name in names:
        path = folder / name
        with path.open("rb") as handle:
            try:
                entry: dict[Any, Any] = pickle.load(handle, encoding="latin1")
                entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
                data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                targets = entry["labels"] if "labels" in entry else entry["fine_labels"]
            except Exception as err:
                raise DataError(
                    f"CIFAR-10: '{path}' is not a CIFAR python batch ({type(err).__name__}: "
                    f"{err}). Fix: re-download with --data.download=true into an empty folder."
                ) from err
        images.append(data)
        labels.extend(int(t) for t in targets)
    return TensorImageDataset(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))


class CIFARTransform:
    """Fast per-sample CIFAR transform on ``uint8`` tensors (or PIL images).

    Optional augmentation (zero-pad by ``padding``, random crop back to the input size, random
    horizontal flip), then scaling to ``[0, 1]`` and per-channel standardisation. About 20x
    cheaper than the equivalent ``torchvision.transforms.v2`` pipeline on 32x32 images, which
    matters when a GPU consumes tens of thousands of images per second.

    Args:
        mean: per-channel mean.
        std: per-channel standard deviation.
        augment: apply the random crop and flip.
        padding: zero padding before the random crop.

    Example:
        >>> tf = CIFARTransform((0.5,) * 3, (0.5,) * 3, augment=True)
        >>> out = tf(torch.full((3, 32, 32), 255, dtype=torch.uint8))
        >>> tuple(out.shape), out.dtype, float(out.max())
        ((3, 32, 32), torch.float32, 1.0)
    """

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment
        self.padding = padding

    def __call__(self, image: Any) -> torch.Tensor:
        """Return the normalised (and, for training, augmented) ``float32 [C, H, W]`` image."""
        x = image if isinstance(image, torch.Tensor) else pil_to_tensor(image.convert("RGB"))
        if self.augment:
            height, width = x.shape[-2:]
            pad = self.padding
            if pad > 0:
                x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
                top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
                x = x[:, top : top + height, left : left + width]
            if float(torch.rand(())) < 0.5:
                x = x.flip(-1)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(augment={self.augment}, padding={self.padding})"


def decode_to_memory(folder: ImageFolder) -> TensorImageDataset:
    """Decode every image of an ImageFolder once into a ``uint8 [N, 3, H, W]`` tensor.

    Raises:
        DataError: an image cannot be decoded, or the images differ in size.
    """

    def load(path: str) -> torch.Tensor:
        try:  # libjpeg-turbo / libpng through torchvision: several times faster than PIL
            return decode_image(path, mode=ImageReadMode.RGB)
        except RuntimeError:
            return pil_to_tensor(folder.loader(path))

    first = load(folder.samples[0][0])
    images = torch.empty((len(folder), *first.shape), dtype=torch.uint8)
    for i, (path, _) in enumerate(folder.samples):
        image = load(path)
        if image.shape != first.shape:
            raise DataError(
                f"CIFAR-10: '{path}' is {tuple(image.shape[1:])}, not {tuple(first.shape[1:])} "
                "like the others. Fix: every image must have the same size (32x32)."
            )
        images[i] = image
    return TensorImageDataset(images, torch.tensor(folder.targets))


@register_datamodule("cifar10")
class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10 (10 classes, 32x32 RGB), from either of two layouts, detected automatically.

    * torchvision's ``cifar-10-batches-py`` folder inside ``data_dir`` (or ``data_dir`` itself);
      ``download=True`` fetches it with torchvision when it is missing.
    * an ImageFolder tree: ``data_dir/train/<class>/*.jpg`` and ``data_dir/test/<class>/*.jpg``
      (``val/`` is accepted for ``test/``). Class indices follow the sorted folder names, which
      for the standard names equals torchvision's order.

    Training images get the standard augmentation (random 32x32 crop of the 4-pixel zero-padded
    image, horizontal flip); all images are normalised with the CIFAR-10 mean/std. With
    ``val_split > 0`` a seeded fraction of the training set is held out (without augmentation)
    for validation; otherwise the test set doubles as the validation set.

    Args:
        data_dir: folder holding one of the layouts.
        batch_size: samples per batch.
        num_workers: loader processes.
        download: download torchvision's batches when no layout is found.
        val_split: fraction of the training set held out for validation (0: validate on test).
        augment: random crop + flip on training images.
        in_memory: decode an ImageFolder tree once into memory (~150 MB for CIFAR-10) instead of
            decoding every JPEG in every epoch (the pickled batches always load into memory).
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the validation split and the subsets.

    Example:
        >>> dm = CIFAR10DataModule("data/cifar10", batch_size=64, val_split=0.1)
        >>> dm.num_classes, dm.task, tuple(dm.example_input(2).shape)
        (10, 'classification', (2, 3, 32, 32))
    """

    task = "classification"
    num_classes = 10
    class_names = CIFAR10_CLASSES
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str = "data/cifar10",
        batch_size: int = 128,
        num_workers: int = 2,
        download: bool = False,
        val_split: float = 0.0,
        augment: bool = True,
        in_memory: bool = True,
        subset: int | None = None,
        eval_subset: int | None = None,
        pin_memory: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, drop_last, subset, eval_subset, seed)
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split must lie in [0, 1), got {val_split}.")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.download = download
        self.val_split = val_split
        self.augment = augment
        self.in_memory = in_memory
        self._bases: dict[str, Dataset] = {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, 32, 32)``."""
        return (3, 32, 32)

    # ---------------------------------------------------------------- discovery
    def _detect(self) -> tuple[Format, Path] | None:
        root = Path(self.data_dir).expanduser()
        if root.name == BATCHES_DIR and root.is_dir():
            return "batches", root
        if (root / BATCHES_DIR).is_dir():
            return "batches", root / BATCHES_DIR
        if (root / "train").is_dir() or (root / "test").is_dir():
            return "folder", root
        return None

    def _locate(self) -> tuple[Format, Path]:
        found = self._detect()
        if found is not None:
            return found
        root = Path(self.data_dir).expanduser()
        problem = (
            "the directory does not exist"
            if not root.exists()
            else f"found neither '{BATCHES_DIR}/' nor 'train/' + 'test/' folders"
        )
        raise DatasetNotFoundError("CIFAR-10", root, problem, LAYOUT, FIX)

    def prepare_data(self) -> None:
        """Download torchvision's batches into ``data_dir`` when ``download=True`` and needed."""
        if self.download and self._detect() is None:
            from torchvision.datasets import CIFAR10

            for train in (True, False):
                CIFAR10(str(Path(self.data_dir).expanduser()), train=train, download=True)

    def _base(self, part: Literal["train", "test"]) -> Dataset:
        """Decoded split without transforms (cached): ``uint8`` tensors or PIL images."""
        if part not in self._bases:
            fmt, where = self._locate()
            if fmt == "batches":
                names = TRAIN_BATCHES if part == "train" else TEST_BATCHES
                missing = [n for n in names if not (where / n).is_file()]
                if missing:
                    raise DatasetNotFoundError(
                        "CIFAR-10",
                        where.parent,
                        f"'{BATCHES_DIR}/' lacks {', '.join(missing)}",
                        LAYOUT,
                        FIX,
                    )
                self._bases[part] = read_cifar_batches(where, names)
            else:
                split: str = part
                if part == "test" and not (where / "test").is_dir() and (where / "val").is_dir():
                    split = "val"
                folder = open_image_folder("CIFAR-10", where, split, LAYOUT, FIX, num_classes=10)
                self._bases[part] = decode_to_memory(folder) if self.in_memory else folder
        return self._bases[part]

    # ---------------------------------------------------------------- splits
    def _transform(self, train: bool) -> CIFARTransform:
        return CIFARTransform(self.mean, self.std, augment=train and self.augment)

    def _build_split(self, split: Split) -> Dataset:
        if split == "test" or (split == "val" and self.val_split == 0):
            return TransformSubset(self._base("test"), None, self._transform(train=False))
        base = self._base("train")
        kept, held = split_indices(len(base), self.val_split, self.seed)  # type: ignore[arg-type]
        if split == "train":
            return TransformSubset(base, kept, self._transform(train=True))
        return TransformSubset(base, held, self._transform(train=False))
