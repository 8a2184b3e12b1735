"""Opening ``ImageFolder`` trees (``<split>/<class>/*.jpg``) with errors that say what to fix."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from torchvision.datasets import ImageFolder

from lightning_prune.data.errors import DatasetNotFoundError, read_rgb


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the sub-folders of ``split_dir`` (the classes of an ImageFolder tree)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_image_folder(
    dataset: str,
    root: Path,
    split: str,
    layout: str,
    fix: str,
    num_classes: int | None = None,
    classes: list[str] | None = None,
    count_fix: str = "point --data.data_dir at a tree with that many class folders",
) -> ImageFolder:
    """Open ``root/split`` as an :class:`~torchvision.datasets.ImageFolder` (PIL RGB images).

    An image that cannot be decoded raises :class:`~.errors.DataError` naming the file.

    Args:
        dataset: dataset name for messages.
        root: the data directory.
        split: the split folder inside ``root``.
        layout: expected tree for error messages (``{root}`` is filled in).
        fix: the fix for error messages.
        num_classes: when given, the number of class folders required.
        classes: when given, the exact class folder names required (e.g. the training split's,
            so that class indices agree across splits).
        count_fix: the fix for a wrong number of class folders (``{found}``: the number found).

    Returns:
        The dataset; ``targets`` index the sorted class folder names.

    Raises:
        DatasetNotFoundError: missing split folder, no class folders, or class folders without
            images (the message names the folder and the expected layout).
        ValueError: the class folders are not the expected ones.
    """
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(dataset, root, f"no '{split}/' folder", layout, fix)
    found = class_folders(split_dir)
    if not found:
        raise DatasetNotFoundError(
            dataset,
            root,
            f"'{split}/' holds no class folders (images must sit in '{split}/<class>/')",
            layout,
            fix,
        )
    if num_classes is not None and len(found) != num_classes:
        raise ValueError(
            f"{dataset}: '{split_dir}' holds {len(found)} class folders, expected {num_classes} "
            f"(found: {', '.join(found[:12])}{', ...' if len(found) > 12 else ''}). Fix: "
            f"{count_fix.format(found=len(found))}."
        )
    if classes is not None and found != classes:
        missing = sorted(set(classes) - set(found))
        extra = sorted(set(found) - set(classes))
        raise ValueError(
            f"{dataset}: the class folders of '{split_dir}' differ from the training split's "
            f"(missing: {missing[:8]}, unexpected: {extra[:8]}); class indices would not agree. "
            "Give every split the same class folders."
        )
    try:
        return ImageFolder(str(split_dir), loader=partial(read_rgb, dataset=dataset))
    except FileNotFoundError as err:
        raise DatasetNotFoundError(
            dataset, root, f"'{split}/' has class folders without images ({err})", layout, fix
        ) from err
