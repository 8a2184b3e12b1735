"""Joint image + mask transforms for segmentation: the same geometry applied to both.

Every transform is a callable ``(image, mask) -> (image, mask)``. Images are ``[C, H, W]``
tensors (``uint8`` until :class:`Normalize`, which makes them ``float32``); masks are ``[H, W]``
integer tensors (``int64`` after :class:`Normalize`). Images are resized bilinearly (antialiased),
masks with nearest-neighbour interpolation, so label values never blend. Randomness comes from
torch's global generator, which every DataLoader worker seeds differently.

Example:
    >>> import torch
    >>> tf = segmentation_transforms(train=True, size=(32, 48), scale_range=(0.5, 2.0))
    >>> image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    >>> mask = torch.randint(0, 5, (40, 60), dtype=torch.uint8)
    >>> x, y = tf(image, mask)
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([3, 32, 48]), torch.float32, torch.Size([32, 48]), torch.int64)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

Pair = tuple[Tensor, Tensor]


class JointTransform(Protocol):
    """Anything that maps an ``(image, mask)`` pair to a transformed pair."""

    def __call__(self, image: Any, mask: Any) -> Any:
        """Return the transformed ``(image, mask)``."""
        ...


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"sizes must be positive, got {tuple(size)}.")
    return height, width


def _resize_pair(image: Tensor, mask: Tensor, size: tuple[int, int]) -> Pair:
    if tuple(image.shape[-2:]) == size:
        return image, mask
    image = TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]
    return image, mask


def _pad_pair(
    image: Tensor, mask: Tensor, size: tuple[int, int], fill: int, mask_fill: int, center: bool
) -> Pair:
    height, width = image.shape[-2:]
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if pad_h == 0 and pad_w == 0:
        return image, mask
    top, left = (pad_h // 2, pad_w // 2) if center else (0, 0)
    padding = (left, pad_w - left, top, pad_h - top)
    image = F.pad(image, padding, value=fill)
    mask = F.pad(mask, padding, value=mask_fill)
    return image, mask


class JointCompose:
    """Apply joint transforms in order.

    Args:
        transforms: the transforms.
    """

    def __init__(self, transforms: Sequence[JointTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any, mask: Any) -> Any:
        """Return the transformed ``(image, mask)``."""
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{body}\n])"


class ToTensors:
    """PIL images / arrays / tensors -> ``uint8 [C, H, W]`` image and integer ``[H, W]`` mask.

    The image is converted to RGB (or kept single-channel when ``rgb=False``); the mask keeps its
    values (``uint8`` for 8-bit label PNGs, ``int64`` for wider ones).

    Args:
        rgb: convert PIL images to three-channel RGB.
    """

    def __init__(self, rgb: bool = True) -> None:
        self.rgb = rgb

    def __call__(self, image: Any, mask: Any) -> Pair:
        """Return the transformed ``(image, mask)``."""
        if isinstance(image, Image.Image):
            if self.rgb and image.mode != "RGB":
                image = image.convert("RGB")
            image = TF.pil_to_tensor(image)
        elif not isinstance(image, Tensor):
            array = np.asarray(image)
            array = array[:, :, None] if array.ndim == 2 else array
            image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if not isinstance(mask, Tensor):
            array = np.array(mask)
            if array.dtype != np.uint8:
                array = array.astype(np.int64)
            mask = torch.from_numpy(array)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"image and mask sizes differ: {tuple(image.shape[-2:])} vs {tuple(mask.shape)}."
            )
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rgb={self.rgb})"


class MapLabels:
    """Map raw label values through a lookup table (e.g. Cityscapes label ids -> train ids).

    Works on PIL masks (8-bit ``L``/``P``: a fast byte lookup, so place it first in a pipeline)
    and on integer tensors. The image passes through unchanged.

    Args:
        table: ``table[raw] = mapped``; raw values outside the table map to ``default``.
        default: value for raw labels the table does not cover.
    """

    def __init__(self, table: Sequence[int] | Tensor, default: int = 255) -> None:
        lut = torch.full((256,), default, dtype=torch.long)
        values = torch.as_tensor(table, dtype=torch.long)[:256]
        lut[: len(values)] = values
        self.table = lut
        self.default = default
        self._fits_uint8 = int(lut.min()) >= 0 and int(lut.max()) <= 255

    def __call__(self, image: Any, mask: Any) -> Any:
        """Return ``(image, mapped mask)``; the mask keeps its type (PIL or tensor)."""
        if isinstance(mask, Image.Image):
            if mask.mode in ("L", "P") and self._fits_uint8:
                if mask.mode == "P":  # palette indices are the labels: read them as bytes
                    mask = Image.frombytes("L", mask.size, mask.tobytes())
                return image, mask.point(self.table.tolist())
            mask = torch.from_numpy(np.array(mask).astype(np.int64))
        mapped = self.table[mask.long().clamp_(0, 255)]
        if mask.dtype == torch.uint8 and self._fits_uint8:
            mapped = mapped.to(torch.uint8)
        return image, mapped

    def __repr__(self) -> str:
        return f"{type(self).__name__}(default={self.default})"


class Resize:
    """Resize both to ``size`` (``(H, W)``); bilinear for the image, nearest for the mask.

    Args:
        size: output ``(height, width)``.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _size2(size)

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        return _resize_pair(image, mask, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class RandomResize:
    """Resize both by a random factor ``s ~ U(scale_range)`` of a base size.

    Args:
        scale_range: ``(min, max)`` scale factors.
        base_size: ``(H, W)`` the factor applies to; ``None`` uses the input's own size.
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: int | Sequence[int] | None = None,
    ) -> None:
        low, high = float(scale_range[0]), float(scale_range[1])
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {tuple(scale_range)}.")
        self.scale_range = (low, high)
        self.base_size = None if base_size is None else _size2(base_size)

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        base = self.base_size or (int(image.shape[-2]), int(image.shape[-1]))
        size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
        return _resize_pair(image, mask, size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale_range={self.scale_range}, base_size={self.base_size})"


class RandomCrop:
    """Crop both at the same random position; pad first (image ``fill``, mask ``mask_fill``).

    Args:
        size: output ``(height, width)``.
        fill: image padding value.
        mask_fill: mask padding value (the ignore index, so padding is never learned).
    """

    def __init__(self, size: int | Sequence[int], fill: int = 0, mask_fill: int = 255) -> None:
        self.size = _size2(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        image, mask = _pad_pair(image, mask, self.size, self.fill, self.mask_fill, center=False)
        height, width = image.shape[-2:]
        top = int(torch.randint(0, height - self.size[0] + 1, ()))
        left = int(torch.randint(0, width - self.size[1] + 1, ()))
        bottom, right = top + self.size[0], left + self.size[1]
        return image[..., top:bottom, left:right], mask[top:bottom, left:right]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mask_fill={self.mask_fill})"


class CenterCrop:
    """Crop both around the centre; pad symmetrically where the input is smaller.

    Args:
        size: output ``(height, width)``.
        fill: image padding value.
        mask_fill: mask padding value (the ignore index).
    """

    def __init__(self, size: int | Sequence[int], fill: int = 0, mask_fill: int = 255) -> None:
        self.size = _size2(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        image, mask = _pad_pair(image, mask, self.size, self.fill, self.mask_fill, center=True)
        height, width = image.shape[-2:]
        top, left = (height - self.size[0]) // 2, (width - self.size[1]) // 2
        bottom, right = top + self.size[0], left + self.size[1]
        return image[..., top:bottom, left:right], mask[top:bottom, left:right]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mask_fill={self.mask_fill})"


class RandomHorizontalFlip:
    """Mirror both left-right with probability ``p``.

    Args:
        p: flip probability.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}.")
        self.p = p

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        if self.p > 0 and float(torch.rand(())) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Normalize:
    """Image to ``float32`` (``uint8`` scaled to ``[0, 1]``), standardised; mask to ``int64``.

    Args:
        mean: per-channel mean of ``[0, 1]`` images.
        std: per-channel standard deviation.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        mean_t = torch.tensor(self.mean).view(-1, 1, 1)
        std_t = torch.tensor(self.std).view(-1, 1, 1)
        self._scale, self._shift = 1.0 / std_t, mean_t / std_t  # x' = x * scale - shift

    def __call__(self, image: Tensor, mask: Tensor) -> Pair:
        """Return the transformed ``(image, mask)``."""
        scale = self._scale / 255.0 if image.dtype == torch.uint8 else self._scale
        return image.to(torch.float32).mul_(scale).sub_(self._shift), mask.long()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def segmentation_transforms(
    train: bool,
    size: int | Sequence[int],
    base_size: int | Sequence[int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    ignore_index: int = 255,
    label_table: Sequence[int] | Tensor | None = None,
) -> JointCompose:
    """The standard segmentation pipeline.

    Train: label mapping -> to tensors -> random resize (``scale_range`` times ``base_size``,
    or the native size) -> random crop to ``size`` (padding with ``ignore_index``) -> random
    flip -> normalise. Eval: label mapping -> to tensors -> resize to ``base_size`` (if given)
    -> centre crop/pad to ``size`` -> normalise.

    Args:
        train: build the augmenting training pipeline (else the deterministic eval one).
        size: ``(H, W)`` of every output sample.
        base_size: ``(H, W)`` the images are resized to before augmentation; ``None`` keeps the
            native resolution.
        scale_range: random scale factors for training.
        hflip: random horizontal flips for training.
        mean: normalisation mean.
        std: normalisation standard deviation.
        ignore_index: mask value of padded (and unmapped) pixels.
        label_table: optional raw-label -> class lookup table (unlisted values -> ignore_index).

    Returns:
        A :class:`JointCompose` taking ``(PIL image, PIL mask)`` or tensors.
    """
    steps: list[JointTransform] = []
    if label_table is not None:
        steps.append(MapLabels(label_table, default=ignore_index))
    steps.append(ToTensors())
    if train:
        steps.append(RandomResize(scale_range, base_size))
    elif base_size is not None:
        steps.append(Resize(base_size))
    if train:
        steps.append(RandomCrop(size, fill=0, mask_fill=ignore_index))
        if hflip:
            steps.append(RandomHorizontalFlip())
    else:
        steps.append(CenterCrop(size, fill=0, mask_fill=ignore_index))
    steps.append(Normalize(mean, std))
    return JointCompose(steps)
