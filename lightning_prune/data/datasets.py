"""Small dataset helpers shared by the datamodules: in-memory tensors, transformed subsets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset


class TensorImageDataset(Dataset):
    """Images and integer labels held in memory as tensors.

    Args:
        images: ``[N, C, H, W]`` tensor (``uint8`` or float).
        labels: ``[N]`` integer tensor.
        transform: optional callable applied to each image.

    Example:
        >>> ds = TensorImageDataset(torch.zeros(4, 3, 8, 8), torch.arange(4))
        >>> len(ds), ds[2][0].shape, ds[2][1]
        (4, torch.Size([3, 8, 8]), 2)
    """

    def __init__(
        self, images: Tensor, labels: Tensor, transform: Callable[[Any], Any] | None = None
    ) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"expected images [N, C, H, W] and labels [N], got {tuple(images.shape)} and "
                f"{tuple(labels.shape)}."
            )
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


class TransformSubset(Dataset):
    """A view of ``dataset`` restricted to ``indices`` with a transform on the first element.

    Lets one decoded dataset serve two splits with different transforms (a train split with
    augmentation and a held-out validation split without).

    Args:
        dataset: a dataset returning ``(input, target)`` pairs.
        indices: the indices to expose, in order (``None``: all of them).
        transform: applied to ``input``.

    Example:
        >>> base = TensorImageDataset(torch.zeros(5, 1, 2, 2), torch.arange(5))
        >>> view = TransformSubset(base, [4, 0], lambda x: x + 1)
        >>> len(view), view[0][1], float(view[0][0].max())
        (2, 4, 1.0)
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        sample, target = self.dataset[self.indices[index]]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, target


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministically split ``range(n)`` into ``(kept, held_out)``, ``held_out ≈ fraction * n``.

    Both lists are sorted, so iteration order follows the underlying dataset.

    Example:
        >>> kept, held = split_indices(10, 0.2, seed=0)
        >>> len(kept), len(held), sorted(kept + held) == list(range(10))
        (8, 2, True)
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must lie in [0, 1), got {fraction}.")
    n_held = round(n * fraction)
    if fraction > 0 and n_held == 0 and n > 1:
        n_held = 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_held:]), sorted(order[:n_held])


def limit_dataset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """Return a seeded random subset of ``limit`` samples (or ``dataset`` itself when it fits).

    Example:
        >>> ds = TensorImageDataset(torch.zeros(10, 1, 2, 2), torch.arange(10))
        >>> len(limit_dataset(ds, 3, seed=0)), limit_dataset(ds, None, seed=0) is ds
        (3, True)
    """
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(order.tolist()))
