"""The error raised when a data directory is missing or does not hold the expected layout."""

from __future__ import annotations

import textwrap
from pathlib import Path


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
