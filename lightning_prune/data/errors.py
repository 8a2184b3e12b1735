"""Errors of the data layer: a missing or malformed data directory, an unusable data file."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


class DatasetNotFoundError(FileNotFoundError):
    r"""A data directory is missing, or does not hold the layout a datamodule expects.

    The message names the directory, shows the expected layout as a short tree and says how to
    fix it. It derives from :class:`FileNotFoundError`, so ``except OSError`` still catches it.

    Args:
        dataset: human-readable dataset name (``"CIFAR-10"``).
        data_dir: the directory that was searched.
        problem: what is wrong (``"no 'train/' folder"``).
        layout: the expected tree; ``{root}`` is replaced by ``data_dir``.
        fix: what to do about it.

    Example:
        >>> err = DatasetNotFoundError("Toy", "/nowhere", "directory does not exist",
        ...                            "{root}/\n  train/", "pass --data.data_dir=/path")
        >>> isinstance(err, FileNotFoundError), "/nowhere" in str(err)
        (True, True)
    """

    def __init__(self, dataset: str, data_dir: str | Path, problem: str, layout: str, fix: str):
        self.dataset = dataset
        self.data_dir = Path(data_dir)
        self.problem = problem
        self.layout = layout
        self.fix = fix
        root = str(self.data_dir)
        tree = textwrap.indent(layout.replace("{root}", root), "    ")
        message = (
            f"{dataset} data not usable in '{root}': {problem}.\n"
            f"  Expected layout:\n{tree}\n"
            f"  Fix: {fix}"
        )
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, Path, str, str, str]]:
        # a custom __init__ needs this to survive pickling (DataLoader workers, multiprocessing)
        return (type(self), (self.dataset, self.data_dir, self.problem, self.layout, self.fix))

    def __str__(self) -> str:
        return self.args[0]


class DataError(ValueError):
    """Data that exists but cannot be used as given: an unreadable file, a malformed batch.

    The message names the file, the problem and the fix. It stays a :class:`ValueError`.

    Example:
        >>> str(DataError("CIFAR-10: 'x.jpg' is not an image. Fix: replace or remove it."))
        "CIFAR-10: 'x.jpg' is not an image. Fix: replace or remove it."
    """


def open_image(path: str | Path, dataset: str) -> Any:
    """Open and decode the image file ``path`` with PIL, or raise :class:`DataError`.

    Args:
        path: the file.
        dataset: the dataset's name, for the message.

    Returns:
        The decoded ``PIL.Image.Image`` (its pixels loaded, the file closed).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{dataset}: cannot read image '{path}' ({type(err).__name__}: {err}). Fix: replace "
            "the file with a valid image, or remove it from the data directory."
        ) from err


def read_rgb(path: str | Path, dataset: str) -> Any:
    """:func:`open_image` converted to RGB (an ``ImageFolder`` loader)."""
    return open_image(path, dataset).convert("RGB")
