"""Procedural segmentation data: circles, rectangles and triangles on noisy backgrounds."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_prune.data.base import Split, VisionDataModule, as_size
from lightning_prune.data.registry import register_datamodule

SHAPES_CLASSES = ("background", "circle", "rectangle", "triangle")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class ShapesDataset(Dataset):
    """Random shapes rendered on demand; sample ``i`` depends only on ``(seed, split_id, i)``.

    Each image has a random-colour background with a gentle gradient, 1 to ``max_shapes``
    shapes of random class, size, position and colour (later shapes occlude earlier ones), and
    Gaussian pixel noise. The mask holds 0 (background), 1 (circle), 2 (rectangle) or
    3 (triangle) per pixel. Nothing is stored: memory use is constant.

    Args:
        length: number of samples.
        size: ``(H, W)``.
        channels: 1 or 3.
        max_shapes: most shapes per image.
        noise: standard deviation of the pixel noise (images live in ``[0, 1]`` before
            normalisation).
        seed: global seed.
        split_id: distinguishes splits generated with the same seed.
        mean: normalisation mean (one value for every channel).
        std: normalisation standard deviation.

    Example:
        >>> ds = ShapesDataset(4, size=(32, 48))
        >>> image, mask = ds[0]
        >>> tuple(image.shape), tuple(mask.shape), mask.dtype
        ((3, 32, 48), (32, 48), torch.int64)
        >>> bool((ds[0][0] == image).all())
        True
    """

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (64, 64),
        channels: int = 3,
        max_shapes: int = 3,
        noise: float = 0.1,
        seed: int = 0,
        split_id: int = 0,
        mean: float = 0.5,
        std: float = 0.3,
    ) -> None:
        if length < 0 or max_shapes < 1 or noise < 0 or channels not in (1, 3):
            raise ValueError(
                "need length >= 0, max_shapes >= 1, noise >= 0 and channels in (1, 3), got "
                f"{length}, {max_shapes}, {noise}, {channels}."
            )
        self.length = length
        self.size = as_size(size)
        self.channels = channels
        self.max_shapes = max_shapes
        self.noise = noise
        self.seed = seed
        self.split_id = split_id
        self.mean = mean
        self.std = std
        height, width = self.size
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        self._ys, self._xs = ys, xs

    def __len__(self) -> int:
        return self.length

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw sample ``index``: ``(image [C, H, W] float32 in [0, 1], mask [H, W] int64)``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples.")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        height, width = self.size
        ys, xs = self._ys, self._xs
        background = rng.uniform(0.0, 1.0, self.channels).astype(np.float32)
        tilt_x, tilt_y = rng.uniform(-0.2, 0.2, 2)
        gradient = tilt_x * (xs / width - 0.5) + tilt_y * (ys / height - 0.5)
        image = background[:, None, None] + gradient[None].astype(np.float32)
        mask = np.zeros(self.size, dtype=np.int64)
        side = min(height, width)
        for _ in range(int(rng.integers(1, self.max_shapes + 1))):
            cls = int(rng.integers(1, len(SHAPES_CLASSES)))
            radius = rng.uniform(0.12, 0.3) * side
            cy = rng.uniform(min(radius, height / 2), max(height - radius, height / 2))
            cx = rng.uniform(min(radius, width / 2), max(width - radius, width / 2))
            colour = rng.uniform(0.0, 1.0, self.channels)
            for _ in range(10):
                if np.abs(colour - background).max() >= 0.3:
                    break
                colour = rng.uniform(0.0, 1.0, self.channels)
            region = self._region(cls, cy, cx, radius, rng)
            image[:, region] = colour.astype(np.float32)[:, None]
            mask[region] = cls
        image += self.noise * rng.standard_normal(image.shape).astype(np.float32)
        return np.clip(image, 0.0, 1.0), mask

    def _region(
        self, cls: int, cy: float, cx: float, radius: float, rng: np.random.Generator
    ) -> np.ndarray:
        ys, xs = self._ys, self._xs
        if cls == 1:  # circle
            return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
        if cls == 2:  # axis-aligned rectangle
            half_h, half_w = rng.uniform(0.5, 1.0, 2) * radius
            return (np.abs(ys - cy) <= half_h) & (np.abs(xs - cx) <= half_w)
        # triangle: three vertices around the centre, inside = same side of every edge
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
        angles = angles + rng.uniform(-0.3, 0.3, 3)
        vy, vx = cy + radius * np.sin(angles), cx + radius * np.cos(angles)
        signs = []
        for i in range(3):
            j = (i + 1) % 3
            signs.append((vx[j] - vx[i]) * (ys - vy[i]) - (vy[j] - vy[i]) * (xs - vx[i]))
        cross = np.stack(signs)
        return np.asarray((cross >= 0).all(axis=0) | (cross <= 0).all(axis=0))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.render(index)
        image = (image - self.mean) / self.std
        return torch.from_numpy(image), torch.from_numpy(mask)


@register_datamodule("shapes")
class ShapesDataModule(VisionDataModule):
    """Offline segmentation data: 4 classes (background, circle, rectangle, triangle).

    Generated in memory, on demand and deterministically: sample ``i`` of a split depends only
    on ``(seed, split, i)``, so every run, worker count and machine sees the same data, and the
    three splits never share a sample. Needs no files and no network: the default data for
    segmentation demos and tests. ``ignore_index`` is 255 (never present) so losses can pass it
    uniformly.

    Args:
        size: ``(H, W)`` of the images.
        channels: 1 or 3.
        num_train: training samples.
        num_val: validation samples.
        num_test: test samples.
        max_shapes: most shapes per image.
        noise: pixel noise standard deviation (images in ``[0, 1]`` before normalisation).
        batch_size: samples per batch.
        num_workers: loader processes.
        subset: keep only this many (seeded random) training samples.
        eval_subset: keep only this many validation/test samples.
        pin_memory: pin host memory when CUDA is available.
        drop_last: drop the last incomplete training batch.
        seed: seed of the generated data and the subsets.

    Example:
        >>> dm = ShapesDataModule(size=(32, 32), num_train=8, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), dm.num_classes
        ((4, 3, 32, 32), (4, 32, 32), 4)
    """

    task = "segmentation"
    num_classes = len(SHAPES_CLASSES)
    ignore_index = 255
    class_names = SHAPES_CLASSES

    def __init__(
        self,
        size: tuple[int, int] = (64, 64),
        channels: Literal[1, 3] = 3,
        num_train: int = 1024,
        num_val: int = 256,
        num_test: int = 256,
        max_shapes: int = 3,
        noise: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
        subset: int | None = None,
        eval_subset: int | None = None,
        pin_memory: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, drop_last, subset, eval_subset, seed)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        if min(num_train, num_val, num_test) < 1 or max_shapes < 1 or noise < 0:
            raise ValueError(
                "need num_train, num_val, num_test, max_shapes >= 1 and noise >= 0, got "
                f"{num_train}, {num_val}, {num_test}, {max_shapes}, {noise}."
            )
        self.save_hyperparameters()
        self.size = as_size(size)
        self.channels = channels
        self.lengths = {"train": num_train, "val": num_val, "test": num_test}
        self.max_shapes = max_shapes
        self.noise = noise
        self.mean = (0.5,) * channels
        self.std = (0.3,) * channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, *size)``."""
        return (self.channels, *self.size)

    def _build_split(self, split: Split) -> Dataset:
        return ShapesDataset(
            self.lengths[split],
            size=self.size,
            channels=self.channels,
            max_shapes=self.max_shapes,
            noise=self.noise,
            seed=self.seed,
            split_id=_SPLIT_IDS[split],
            mean=self.mean[0],
            std=self.std[0],
        )
